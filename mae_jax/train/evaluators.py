"""Evaluators the loop runs periodically and at the end of a run.

An evaluator has a ``name``, ``every`` (steps; 0 = only at the end),
``run(state, step) -> dict`` of host scalars, ``scalars(result)``: what of it goes to
``metrics.jsonl`` / TensorBoard, and ``has_result(eval_log)``: whether a re-run
with nothing left to train may skip it. The loop decides when (``loop.itstime``),
logs what they return, adds it to ``W/eval.json`` (``EvalLog``) and, for a task with
``keep_best``, saves a checkpoint carrying the metric. Which evaluators run is
config: ``eval_every_steps`` (reconstruction grids / top-1), ``probe.enabled`` (the
demo's quick linear probe).
"""
from __future__ import annotations

import json
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mae_jax import viz
from mae_jax.data import pipeline
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import probe
from mae_jax.train import step as step_lib

EVAL_FILE = "eval.json"


class EvalLog:
  """``W/eval.json``: the latest results, a history and the best of one metric."""

  def __init__(self, workdir: str, best_metric: str | None = None, enabled: bool = True):
    self.path = epath.Path(workdir) / EVAL_FILE
    self.best_metric = best_metric
    self.enabled = enabled
    self.data = {"history": []}
    if self.path.exists():
      try:
        self.data = json.loads(self.path.read_text())
      except json.JSONDecodeError:
        logging.warning("%s is not valid JSON; starting a new one", self.path)

  def has(self, key: str) -> bool:
    return key in self.data

  def add(self, step: int, result: dict) -> dict:
    """Merges ``result`` for ``step`` (history rows past ``step`` are dropped)."""
    history = [h for h in self.data.get("history", []) if h["step"] <= step]
    if history and history[-1]["step"] == step:
      history[-1] = {**history[-1], **result}
    else:
      history.append({"step": int(step), **result})
    data = {**self.data, **result, "step": int(step), "history": history}
    if self.best_metric:
      scored = [h for h in history if self.best_metric in h]
      if scored:
        best = max(scored, key=lambda h: h[self.best_metric])
        data.update({f"best_{self.best_metric}": best[self.best_metric],
                     "best_step": best["step"]})
    self.data = data
    if self.enabled:
      self.path.write_text(json.dumps(data, indent=2))
    return data

  def note(self, **values) -> None:
    """Adds fields outside the history (e.g. the best checkpoint's path)."""
    self.data.update(values)
    if self.enabled:
      self.path.write_text(json.dumps(self.data, indent=2))


# --------------------------------------------------------------------- MAE pretraining


class Reconstructions:
  """Reconstruction grids of fixed eval images: PNG in ``W/recon`` and TensorBoard."""

  name = "reconstructions"

  def __init__(self, config, model, mesh, workdir: str, writer, every: int):
    self.every = int(every)
    self.workdir = workdir
    self.writer = writer
    self.config = config
    self.images, _ = pipeline.eval_arrays(config.data, config.data.eval_split,
                                          config.num_recon_images)
    self.mean, self.std = pipeline.normalization(config.data)
    self.mesh = mesh
    replicated = sharding_lib.replicated(mesh)
    self._device_images = jax.device_put(self.images, replicated)  # once, not per grid

    def apply(params, images, key):
      return model.apply({"params": params}, images, train=False, rngs={"masking": key})
    self._run = jax.jit(apply, out_shardings=replicated)  # every process can read it

  def has_result(self, eval_log: EvalLog) -> bool:
    return any(epath.Path(self.workdir, "recon").glob("*.png"))

  def scalars(self, result: dict) -> dict:
    return {}  # the grid goes to TensorBoard as an image

  def run(self, state, step: int) -> dict:
    with jax.set_mesh(self.mesh), sharding_lib.logical_rules():
      loss, pred, mask = self._run(state.params, self._device_images, jax.random.key(step))
    if jax.process_index() == 0:
      c = self.config
      rows = viz.reconstruction_rows(self.images, np.asarray(jax.device_get(pred)),
                                     np.asarray(jax.device_get(mask)), c.model.patch_size,
                                     c.model.norm_pix_loss, self.mean, self.std)
      grid = viz.grid_image(rows, scale=viz.default_scale(c.data.image_size))
      viz.save_png(grid, str(epath.Path(self.workdir, "recon", f"step_{step:07d}.png")))
      self.writer.image(step, "reconstructions", grid)
    return {"recon_loss": float(loss)}


class DemoProbe:
  """The demo's quick linear probe (``train/probe.py``) on the trained encoder, a
  random-init encoder of the same architecture and the raw pixels, same images."""

  name = "linear_probe"
  every = 0

  def __init__(self, config, model):
    self.config = config
    self.model = model

  def has_result(self, eval_log: EvalLog) -> bool:
    return False  # cheap enough to repeat; eval.json gets the numbers again

  def scalars(self, result: dict) -> dict:
    return {}

  def run(self, state, step: int) -> dict:
    c = self.config
    train = pipeline.eval_arrays(c.data, c.data.split, c.probe.max_train)
    test = pipeline.eval_arrays(c.data, c.data.eval_split, c.probe.max_test)
    num_classes = int(train[1].max()) + 1
    t0 = time.time()
    params = jax.device_get(state.params)
    mae_top1 = probe.probe_top1(self.model, params, train, test, num_classes, c.probe)
    from mae_jax.train.step import init_rngs
    random_params = jax.jit(self.model.init)(init_rngs(c.seed + 1),
                                             jnp.asarray(train[0][:1]))["params"]
    random_top1 = probe.probe_top1(self.model, nn.unbox(random_params), train, test,
                                   num_classes, c.probe)
    pixels_top1 = probe.logistic_regression_top1(
        train[0].reshape(len(train[0]), -1), train[1], test[0].reshape(len(test[0]), -1),
        test[1], num_classes, steps=c.probe.steps, lr=c.probe.lr,
        weight_decay=c.probe.weight_decay)
    logging.info("linear probe top-1 on %s/%s: MAE encoder %.4f, random encoder %.4f, raw "
                 "pixels %.4f (%d train / %d test images, %.0f s)", c.data.name,
                 c.data.eval_split, mae_top1, random_top1, pixels_top1, len(train[1]),
                 len(test[1]), time.time() - t0)
    return {"linear_probe_top1": mae_top1, "random_init_probe_top1": random_top1,
            "raw_pixels_probe_top1": pixels_top1,
            "probe_train_images": int(len(train[1])), "probe_test_images": int(len(test[1]))}


# --------------------------------------------------------------------- classifiers


class Classification:
  """Top-1 / top-5 over an eval split, sharded over the mesh, process-count independent.

  The eval batch is rounded up to a multiple of the data-parallel size (the extra
  rows are padding, masked out), so any mesh can evaluate any ``eval_batch_size``.
  ``variables_fn(state)`` gives the variables to evaluate; ``extra`` names other
  variable sets (e.g. the EMA weights) reported with a prefix.
  """

  name = "classification"

  def __init__(self, config, model, mesh, every: int, variables_fn, extra=None):
    self.every = int(every)
    self.variables_fn = variables_fn
    self.extra = extra or {}
    self.mesh = mesh
    dp = mesh_lib.data_parallel_size(mesh)
    requested = int(config.eval_batch_size or config.batch_size)
    batch = -(-requested // dp) * dp
    if batch != requested:
      logging.info("eval batch %d rounded up to %d (a multiple of the data-parallel size "
                   "%d); padding rows are not counted", requested, batch, dp)
    self.image_sharding = sharding_lib.batch_sharding(mesh)
    self.vector_sharding = sharding_lib.batch_sharding(mesh, 1)
    rows = sharding_lib.process_batch_rows(self.image_sharding, batch)
    self.num_batches, self.batches = pipeline.eval_batches(
        config.data, config.data.eval_split, global_batch=batch, rows=rows,
        max_examples=config.data.eval_max_examples or None)
    self.batch = batch
    k = min(5, model.num_classes)
    pixel_stats = pipeline.normalization(config.data)

    @jax.jit
    def counts(variables, images, labels, valid):  # images: uint8, normalised here
      images = step_lib.to_model_input(images, pixel_stats)
      logits = model.apply(variables, images, train=False)
      top = jax.lax.top_k(logits, k)[1]
      hit1 = (top[:, 0] == labels) & valid
      hit5 = jnp.any(top == labels[:, None], axis=-1) & valid
      return jnp.stack([hit1.sum(), hit5.sum(), valid.sum()]).astype(jnp.int32)
    self._counts = counts

  def has_result(self, eval_log: EvalLog) -> bool:
    return eval_log.has("top1")

  def scalars(self, result: dict) -> dict:
    return {(k if "_" in k else f"eval_{k}"): v for k, v in result.items()
            if k.endswith(("top1", "top5"))}

  def evaluate(self, variables) -> dict:
    total = None
    shape = lambda a: (self.batch,) + a.shape[1:]
    with jax.set_mesh(self.mesh), sharding_lib.logical_rules():
      for batch in self.batches():
        arrays = [jax.make_array_from_process_local_data(s, batch[n], shape(batch[n]))
                  for s, n in ((self.image_sharding, "image"),
                               (self.vector_sharding, "label"),
                               (self.vector_sharding, "valid"))]
        c = self._counts(variables, *arrays)
        total = c if total is None else total + c
    top1, top5, n = (int(v) for v in jax.device_get(total))
    return {"top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "num_examples": n}

  def run(self, state, step: int) -> dict:
    t0 = time.time()
    result = self.evaluate(self.variables_fn(state))
    for prefix, fn in self.extra.items():
      other = self.evaluate(fn(state))
      result.update({f"{prefix}_top1": other["top1"], f"{prefix}_top5": other["top5"]})
    logging.info("eval at step %d: top-1 %.4f top-5 %.4f (%d images, %.0f s)", step,
                 result["top1"], result["top5"], result["num_examples"], time.time() - t0)
    return result
