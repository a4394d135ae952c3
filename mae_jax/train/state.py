"""Train state: a plain pytree of global arrays (what Orbax saves)."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


class TeacherTrainState(TrainState):
  """The train state of ``model.target=teacher``: also the EMA teacher's encoder params
  (``mae_jax.models.targets.encoder_params`` of ``params``), sharded like them."""
  teacher: Any


class ClassifierState(flax.struct.PyTreeNode):
  """What a fine-tune / probe checkpoint holds; ``{}`` where a part is unused."""
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any    # BatchNorm statistics (linear probe)
  ema: Any            # optax.EmaState whose ``ema`` is the weight average (fine-tuning)
