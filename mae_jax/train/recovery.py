"""Recovery from a non-finite step: ``optim.on_nonfinite`` = ``stop`` | ``recover``.

``stop`` (the default): the run ends with one error line at the first step whose
loss, gradient norm or parameter norm is not finite; nothing non-finite is ever
checkpointed. ``recover`` does by itself what a person would do:

1. go back to the last good checkpoint (params, optimizer, data position);
2. drop ``1 + recover.skip_batches`` batches of the data stream where the failing
   step took its batch: the failing batch and the ``skip_batches`` after it (the
   steps between the checkpoint and the failure are replayed on their own batches);
3. draw new randomness for the replayed steps and every later one (masks, drop
   path, erasing): the step's seed folds in the number of recoveries so far;
4. optionally scale the learning rate by ``recover.lr_factor`` for
   ``recover.cooldown_steps`` steps from the checkpoint it went back to;

at most ``recover.max_events`` times in a run; the next non-finite step stops it
with the usual error line. Each event is a row of ``metrics.jsonl``
(``event: recovered``, the failing step, the cause, the step it went back to, the
batches dropped) and one log line.

The events are the run's recovery state, saved with every later checkpoint
(``checkpoint_io.RECOVERY_ITEM``): a resumed run rebuilds the same step (seed and
learning-rate windows) and drops the same batches, so it equals a run that was never
interrupted. Every process sees the same global metrics and the same checkpoints,
so all take the same decision at the same step.

``MAE_JAX_TEST_NONFINITE_STEPS`` (tests only; e.g. ``5,9``): the metrics of those
steps are made non-finite the first time this process computes them.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from mae_jax import config_lib

MODES = ("stop", "recover")
FAULT_ENV = "MAE_JAX_TEST_NONFINITE_STEPS"
_SEED_STRIDE = 1_000_003  # derived seeds of successive recoveries


def defaults() -> dict:
  """``optim.recover``'s defaults (``config_lib.nonfinite_defaults``)."""
  return dict(config_lib.nonfinite_defaults()["recover"])


def nonfinite_cause(host: dict) -> str:
  """The measured values that are not finite, e.g. ``loss, grad_norm``."""
  return ", ".join(k for k, v in host.items() if not np.isfinite(v)) or "none"


class Recovery:
  """The recovery policy of a run and its state (the events so far)."""

  def __init__(self, optim_config, accumulation: int = 1):
    """``optim_config`` as the config schema accepts it (``mae_jax.config_schema``)."""
    self.enabled = optim_config.get("on_nonfinite", "stop") == "recover"
    rc = {**defaults(), **dict(optim_config.get("recover", None) or {})}
    self.skip_batches = int(rc["skip_batches"])
    self.lr_factor = float(rc["lr_factor"])
    self.cooldown_steps = int(rc["cooldown_steps"])
    self.max_events = int(rc["max_events"])
    self.accumulation = max(1, int(accumulation))
    self.events: list[dict] = []
    faults = os.environ.get(FAULT_ENV, "").replace(" ", "")
    self._faults = {int(s) for s in faults.split(",") if s}
    self._faulted: set[int] = set()

  # ---------------------------------------------------------------- state
  def state(self) -> dict | None:
    return {"events": self.events} if self.events else None

  def load(self, state: dict | None) -> None:
    self.events = [dict(e) for e in (state or {}).get("events", [])]

  # ---------------------------------------------------------------- decisions
  def can_recover(self) -> bool:
    return self.enabled and len(self.events) < self.max_events

  def record(self, step: int, restored: int, cause: str) -> dict:
    event = {"step": int(step), "restored_step": int(restored), "cause": cause,
             # the failing step's batch was read when the loop was at step - 1
             "skip_at": int(step) - 1, "batches_dropped": 1 + self.skip_batches}
    self.events.append(event)
    return event

  def batches_to_drop(self, step: int) -> int:
    """Batches to drop before reading the batch of the step after ``step``."""
    return sum(e["batches_dropped"] for e in self.events if e["skip_at"] == step)

  # ---------------------------------------------------------------- the step
  def step_seed(self, seed: int) -> int:
    """The train step's seed: ``seed`` until the first recovery, then one per event."""
    return int((seed + _SEED_STRIDE * len(self.events)) % (2 ** 31 - 1)) if self.events \
        else seed

  def _windows(self) -> list[tuple[int, int]]:
    if self.lr_factor == 1.0 or self.cooldown_steps <= 0:
      return []
    return [(e["restored_step"], e["restored_step"] + self.cooldown_steps)
            for e in self.events]

  def _factor(self, step):
    factor = 1.0
    for start, end in self._windows():
      factor = factor * jnp.where((step >= start) & (step < end), self.lr_factor, 1.0)
    return factor

  def schedule(self, schedule):
    """``schedule`` (of optimizer updates) with the cool-down windows applied (the
    logged lr, ``optim.applied_lr`` of it, follows)."""
    if not self._windows():
      return schedule
    k = self.accumulation
    return lambda count: schedule(count) * self._factor(count * k)

  # ---------------------------------------------------------------- tests
  def inject(self, step: int, metrics: dict) -> dict:
    """``metrics`` with a NaN loss at a step ``MAE_JAX_TEST_NONFINITE_STEPS`` names,
    the first time this process computes it."""
    if step in self._faults and step not in self._faulted:
      self._faulted.add(step)
      return {**metrics, "loss": jnp.float32(np.nan)}
    return metrics
