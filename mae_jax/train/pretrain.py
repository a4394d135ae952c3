"""MAE pretraining: the task the loop (``mae_jax.train.loop``) runs for ``mae-jax pretrain``.

The model is ``MaskedAutoencoder``; the optimizer the official AdamW recipe; the
step ``mae_jax.train.step.make_train_step`` (masking RNG folded from seed and step,
so a resumed run masks as an uninterrupted one). Evaluators: reconstruction grids
every ``eval_every_steps`` and at the end; with ``monitor.every_steps`` the k-NN
top-1 of the encoder's features (``monitor/knn_top1``) every that many steps and at
the end; with ``probe.enabled`` the demo's quick linear probe (MAE encoder vs random
encoder vs raw pixels) at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mae_jax import config_schema
from mae_jax.data import pipeline
from mae_jax.models import registry
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import evaluators as evaluators_lib
from mae_jax.train import loop, optim
from mae_jax.train import step as step_lib
from mae_jax.train.tasks import Built


class PretrainTask:
  name = "pretrain"
  keep_best = None
  record_transform = staticmethod(pipeline.train_transform)

  def __init__(self, config):
    config_schema.check(config)
    self.config = config
    self.model = registry.build_mae(config)

  def batch_shardings(self, mesh):
    """The images' sharding (``device_batch`` returns the images alone)."""
    return sharding_lib.batch_sharding(mesh)

  def build(self, mesh, schedule, lr_fn, abstract: bool = False,
            step_seed: int | None = None) -> Built:
    c = self.config
    tx = optim.adamw(c.optim, schedule)
    state, shardings = step_lib.create_train_state(self.model, tx, mesh,
                                                   registry.input_shape(c), c.seed, abstract)
    # (a dry run reads no data: the statistics' values do not change the step's memory)
    train_step = step_lib.make_train_step(self.model, tx, mesh, shardings, lr_fn,
                                          c.seed if step_seed is None else step_seed,
                                          pipeline.normalization(c.data,
                                                                 dataset_required=not abstract),
                                          **self.teacher_schedule(abstract))
    return Built(state, shardings, train_step, self.batch_shardings(mesh))

  def teacher_schedule(self, abstract: bool) -> dict:
    """The EMA teacher's momentum (start, end, optimizer updates to reach end; 0 in
    ``model.teacher_momentum_steps``: the whole run) and the micro-batches per update."""
    m, accum = self.config.model, optim.accumulation_steps(self.config.optim)
    if m.get("target", "pixels") != "teacher":
      return {}
    steps = int(m.teacher_momentum_steps)
    if not steps:  # (a dry run's momentum values do not change the step's memory)
      steps = 1 if abstract else loop.total_steps(self.config)[0] // accum
    return dict(teacher_momentum=(*map(float, m.teacher_momentum), steps), accum_steps=accum)

  def initialize(self, state, mesh):
    return state

  def device_batch(self, host_batch, step: int, shardings):
    shape = registry.input_shape(self.config, self.config.batch_size)
    return loop.global_array(shardings, host_batch["image"], shape)

  def abstract_batch(self, shardings):
    """What ``device_batch`` returns (the data's pixels: uint8 photos), as a
    ``ShapeDtypeStruct``."""
    return jax.ShapeDtypeStruct(registry.input_shape(self.config, self.config.batch_size),
                                self.pixel_dtype(), sharding=shardings)

  def pixel_dtype(self):
    """The data's pixel type (uint8 when the dataset is not available here), once."""
    if not hasattr(self, "_pixel_dtype"):
      self._pixel_dtype = pipeline.pixel_dtype(self.config.data, dataset_required=False)
    return self._pixel_dtype

  def evaluators(self, mesh, workdir: str, writer) -> list:
    c = self.config
    out = [evaluators_lib.Reconstructions(c, self.model, mesh, workdir, writer,
                                          c.eval_every_steps)]
    if c.monitor.every_steps:
      out.append(evaluators_lib.KnnMonitor(c, self.model, mesh))
    if c.probe.enabled:
      out.append(evaluators_lib.DemoProbe(c, self.model))
    return out


def train_and_evaluate(config, workdir: str) -> dict:
  return loop.run(config, workdir, PretrainTask(config))


def dry_run(config) -> dict:
  """Memory per device of this config's train step, compiled from shapes only."""
  return loop.dry_run(config, PretrainTask(config))
