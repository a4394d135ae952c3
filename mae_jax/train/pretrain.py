"""MAE pretraining: the trainer, top to bottom.

Sections: setup, mesh, input, model + optimizer + sharded state, checkpoint
restore, step, loop (log, reconstructions, checkpoints, preemption), final
evaluation. Re-running on the same workdir resumes from the latest checkpoint
and continues exactly: the state, the data-iterator position and the masking
RNG (folded from seed and step) are all restored.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mae_jax import config_lib
from mae_jax.data import pipeline
from mae_jax.errors import ConfigError, NonFiniteLossError
from mae_jax.models import registry
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import checkpoint as ckpt_lib
from mae_jax.train import metrics as metrics_lib
from mae_jax.train import optim, probe
from mae_jax.train import step as step_lib
from mae_jax import viz


class _Preemption:
  """Turns SIGTERM (a preemptible VM going away) into a flag the loop checks."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      logging.warning("received signal %d: saving a checkpoint and stopping", signum)
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a notebook worker)
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self) -> bool:
    """All processes agree, so every host saves the same step."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))


def total_steps(config) -> tuple[int, int]:
  """(total steps, steps per epoch) from num_train_steps or num_epochs."""
  if config.num_train_steps and config.num_train_steps > 0:
    per_epoch = (config_lib.steps_per_epoch(config) if config.optim.warmup_epochs
                 and not config.optim.warmup_steps else 1)
    return int(config.num_train_steps), per_epoch
  if config.num_epochs <= 0:
    raise ConfigError("set num_train_steps > 0 or num_epochs > 0.")
  per_epoch = config_lib.steps_per_epoch(config)
  return int(config.num_epochs * per_epoch), per_epoch


def validate(config) -> None:
  if config.batch_size <= 0:
    raise ConfigError(f"batch_size={config.batch_size} must be positive.")
  if not 0.0 < config.model.mask_ratio < 1.0:
    raise ConfigError(f"model.mask_ratio={config.model.mask_ratio} must be in (0, 1); "
                      "MAE uses 0.75.")
  if config.log_every_steps <= 0:
    raise ConfigError("log_every_steps must be positive.")


def _reconstruction_fn(model, mesh):
  replicated = sharding_lib.replicated(mesh)

  def apply(params, images, key):
    return model.apply({"params": params}, images, train=False, rngs={"masking": key})
  run = jax.jit(apply, out_shardings=replicated)  # every process can read the result

  def fn(params, images, step):
    images = jax.device_put(images, replicated)
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      loss, pred, mask = run(params, images, jax.random.key(step))
    return float(loss), np.asarray(jax.device_get(pred)), np.asarray(jax.device_get(mask))
  return fn


def train_and_evaluate(config, workdir: str) -> dict:
  # ------------------------------------------------------------------ setup
  validate(config)
  is_primary = jax.process_index() == 0
  if is_primary:
    ckpt_lib.save_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_primary)
  num_steps, per_epoch = total_steps(config)

  # ------------------------------------------------------------------ mesh
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch(config.batch_size, mesh)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
               jax.device_count(), jax.process_count())

  # ------------------------------------------------------------------ input
  images_sharding = sharding_lib.batch_sharding(mesh)
  # Each process reads the rows of the global batch its devices hold, so the
  # global batch is the same for any number of processes.
  data_iter = pipeline.train_iterator(
      config.data, global_batch=config.batch_size, seed=config.seed,
      rows=sharding_lib.process_batch_rows(images_sharding, config.batch_size))
  images_shape = (config.batch_size, config.data.image_size, config.data.image_size,
                  config.data.channels)
  mean, std = pipeline.normalization(config.data)
  recon_images, _ = pipeline.eval_arrays(config.data, config.data.eval_split,
                                         config.num_recon_images)

  # ------------------------------------------------------------------ model + optimizer
  model = registry.build_mae(config)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, num_steps,
                                          per_epoch)
  tx = optim.adamw(config.optim, schedule)
  image_shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  state, state_shardings = step_lib.create_train_state(model, tx, mesh, image_shape,
                                                       config.seed)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("model %s: %s parameters", config.model.name, f"{num_params:,}")

  # ------------------------------------------------------------------ restore
  ckpt = ckpt_lib.Checkpointer(workdir, config.checkpoint.every_steps,
                               config.checkpoint.keep, config.checkpoint.async_save)
  state, start_step = ckpt.restore_latest(state, data_iter)
  if start_step >= num_steps:
    logging.info("already at step %d of %d: nothing to train", start_step, num_steps)

  # ------------------------------------------------------------------ step
  train_step = step_lib.make_train_step(model, tx, mesh, state_shardings, schedule,
                                        config.seed)
  reconstruct = _reconstruction_fn(model, mesh)
  config_dict = json.loads(config.to_json_best_effort())

  def write_reconstructions(step):
    loss, pred, mask = reconstruct(state.params, recon_images, step)
    if is_primary:
      rows = viz.reconstruction_rows(recon_images, pred, mask, config.model.patch_size,
                                     config.model.norm_pix_loss, mean, std)
      grid = viz.grid_image(rows, scale=viz.default_scale(config.data.image_size))
      viz.save_png(grid, os.path.join(workdir, "recon", f"step_{step:07d}.png"))
      writer.image(step, "reconstructions", grid)
    return loss

  def last_good():
    steps = ckpt.all_steps()
    return f"step {max(steps)} in {ckpt.directory}" if steps else "none"

  def check_finite(step, host_metrics):
    if not all(np.isfinite(v) for v in host_metrics.values()):
      ckpt.wait()
      raise NonFiniteLossError(
          f"non-finite loss/gradient at step {step} ({host_metrics}); last good checkpoint:"
          f" {last_good()}. Lower optim.base_lr, set optim.clip_grad_norm (e.g. 1.0), or "
          "use float32 (model.dtype).")

  # ------------------------------------------------------------------ loop
  progress = metrics_lib.Progress(num_steps, start_step, enabled=is_primary)
  step = start_step
  pending = None  # (step, device metrics) checked one step late to keep the device busy
  t_log, images_since_log = time.time(), 0
  with _Preemption() as preemption:
    while step < num_steps:
      batch = next(data_iter)
      images = jax.make_array_from_process_local_data(images_sharding, batch["image"],
                                                      images_shape)
      state, metrics = train_step(state, images)
      if pending is not None:
        check_finite(*(pending[0], {k: float(v) for k, v in jax.device_get(pending[1]).items()}))
      step += 1
      pending = (step, metrics)
      images_since_log += config.batch_size

      if step % config.log_every_steps == 0 or step == num_steps:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(step, host)
        now = time.time()
        host["img_per_s"] = images_since_log / max(now - t_log, 1e-9)
        t_log, images_since_log = now, 0
        writer.scalars(step, host)
        progress.update(step, {k: host[k] for k in ("loss", "lr", "img_per_s")})

      if config.eval_every_steps and step % config.eval_every_steps == 0:
        write_reconstructions(step)

      stop = preemption.reached()
      if step % config.checkpoint.every_steps == 0 or step == num_steps or stop:
        check_finite(step, {k: float(v) for k, v in jax.device_get(metrics).items()})
        ckpt.save(step, state, config_dict, data_iter, force=True)
      if stop:
        ckpt.close()
        writer.close()
        logging.info("preempted at step %d; checkpoint saved. Re-run the same command to "
                     "resume.", step)
        return {"preempted_at": step}

  ckpt.wait()
  # ------------------------------------------------------------------ final evaluation
  results = {"step": step}
  if num_steps > start_step or not list(epath.Path(workdir, "recon").glob("*.png")):
    results["recon_loss"] = write_reconstructions(step)
  if config.probe.enabled:
    results.update(demo_probe(config, model, state.params))
    if is_primary:
      epath.Path(workdir, "eval.json").write_text(json.dumps(results, indent=2))
  ckpt.close()
  writer.close()
  return results


def demo_probe(config, model, params) -> dict:
  """Linear-probe top-1 of the trained encoder and of a random one, same budget."""
  train = pipeline.eval_arrays(config.data, config.data.split, config.probe.max_train)
  test = pipeline.eval_arrays(config.data, config.data.eval_split, config.probe.max_test)
  num_classes = int(train[1].max()) + 1
  t0 = time.time()
  mae_top1 = probe.probe_top1(model, params, train, test, num_classes, config.probe)
  random_params = jax.jit(model.init)(step_lib.init_rngs(config.seed + 1),
                                      jnp.asarray(train[0][:1]))["params"]
  import flax.linen as nn
  random_top1 = probe.probe_top1(model, nn.unbox(random_params), train, test, num_classes,
                                 config.probe)
  logging.info("linear probe top-1 on %s/%s: MAE encoder %.4f, random encoder %.4f "
               "(%d train / %d test images, %.0f s)", config.data.name,
               config.data.eval_split, mae_top1, random_top1, len(train[1]), len(test[1]),
               time.time() - t0)
  return {"linear_probe_top1": mae_top1, "random_init_probe_top1": random_top1,
          "probe_train_images": int(len(train[1])), "probe_test_images": int(len(test[1]))}
