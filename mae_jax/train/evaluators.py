"""Evaluators the loop runs periodically and at the end of a run.

An evaluator (the contract: ``mae_jax.train.tasks.Evaluator``) has a ``name``,
``every`` (steps; 0 = only at the end), ``run(state, step) -> dict`` of host scalars,
``scalars(result)``: what of it goes to ``metrics.jsonl`` / TensorBoard, and
``has_result(eval_log)``: whether a re-run with nothing left to train may skip it.
The loop decides when (``loop.itstime``), logs what they return, adds it to
``W/eval.json`` (``EvalLog``) and, for a task with ``keep_best``, saves a checkpoint
carrying the metric. Which evaluators run is config: ``eval_every_steps``
(reconstruction grids / top-1), ``probe.enabled`` (the demo's quick linear probe).
"""
from __future__ import annotations

import functools
import json
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import fileio, viz
from mae_jax.data import pipeline
from mae_jax.models import registry, targets
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import probe
from mae_jax.train import step as step_lib

EVAL_FILE = "eval.json"


def in_order(x):
  """``x`` once computed, in a multi-process run on the CPU backend; ``x`` otherwise.

  The evaluators call one jitted program per batch, and calls with no data dependency
  on each other may be in flight together. Waiting for each keeps the collective
  programs of every process in one order on the CPU backend, where a 2-process run was
  seen to hang in the k-NN monitor (that hang's cause was most likely Orbax's
  background barrier, see ``checkpoint_io.use_coordination_service_barriers``; this is the
  cheap second guard). Accelerators run a device's programs in issue order and keep
  their pipelining.
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    return jax.block_until_ready(x)
  return x


class EvalLog:
  """``W/eval.json``: the latest results, a history and the best of one metric."""

  def __init__(self, workdir: str, best_metric: str | None = None, enabled: bool = True):
    self.path = fileio.join(workdir, EVAL_FILE)
    self.best_metric = best_metric
    self.enabled = enabled
    self.data = {"history": []}
    if fileio.exists(self.path):
      try:
        self.data = json.loads(fileio.read_text(self.path))
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
      fileio.write_text(self.path, json.dumps(data, indent=2))
    return data

  def note(self, **values) -> None:
    """Adds fields outside the history (e.g. the best checkpoint's path)."""
    self.data.update(values)
    if self.enabled:
      fileio.write_text(self.path, json.dumps(self.data, indent=2))


class ShardedSplit:
  """The first ``max_examples`` (0: all) of a split as global batches, in order.

  Iterating yields ``(images, labels, valid)`` global arrays (images uint8, as the
  pipeline ships them: ``step.to_model_input`` normalises them) split over the mesh's
  data-parallel devices; each process reads only the rows its devices hold, so the
  batches do not depend on the process count. ``requested_batch`` is rounded up to a
  multiple of the data-parallel size; padding rows (and rows past the end of the
  split) have ``valid == False``.
  """

  def __init__(self, data_config, split: str, mesh, requested_batch: int,
               max_examples: int | None = None):
    dp = mesh_lib.data_parallel_size(mesh)
    batch = -(-int(requested_batch) // dp) * dp
    if batch != requested_batch:
      logging.info("eval batch %d rounded up to %d (a multiple of the data-parallel size "
                   "%d); padding rows are not counted", requested_batch, batch, dp)
    self.batch = batch
    self.image_sharding = sharding_lib.batch_sharding(mesh)
    self.vector_sharding = sharding_lib.batch_sharding(mesh, 1)
    rows = sharding_lib.process_batch_rows(self.image_sharding, batch)
    self.num_batches, self._batches = pipeline.eval_batches(
        data_config, split, global_batch=batch, rows=rows, max_examples=max_examples or None)

  def __iter__(self):
    for batch in self._batches():
      yield tuple(
          jax.make_array_from_process_local_data(s, batch[n], (self.batch,) + batch[n].shape[1:])
          for s, n in ((self.image_sharding, "image"), (self.vector_sharding, "label"),
                       (self.vector_sharding, "valid")))


# --------------------------------------------------------------------- MAE pretraining


class Reconstructions:
  """Reconstruction grids of fixed eval images: PNG in ``W/recon`` and TensorBoard.

  A model whose target is not pixels (HOG, teacher features) shows the input and its
  mask, the header saying so. A norm-pix model's hidden patches get the mean and variance estimated from the
  visible patches around them (``viz.unnormalize_prediction``), as ``mae-jax
  visualize`` draws them by default; the header says so."""

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

    def apply(params, teacher, images, key):
      target = (None if teacher is None else
                targets.teacher_targets(model, teacher, params, images))
      return model.apply({"params": params}, images, train=False, target=target,
                         rngs={"masking": key})
    self._run = jax.jit(apply, out_shardings=replicated)  # every process can read it

  def has_result(self, eval_log: EvalLog) -> bool:
    return bool(fileio.glob(fileio.join(self.workdir, "recon"), "*.png"))

  def scalars(self, result: dict) -> dict:
    return {}  # the grid goes to TensorBoard as an image

  def run(self, state, step: int) -> dict:
    with jax.set_mesh(self.mesh), sharding_lib.logical_rules():
      loss, pred, mask = self._run(state.params, getattr(state, "teacher", None),
                                   self._device_images, jax.random.key(step))
    if jax.process_index() == 0:
      c = self.config
      tubelet = registry.tubelet_size(c)
      target = c.model.get("target", "pixels")
      if target != "pixels":  # HOG / teacher predictions: the input and its mask only
        grid = viz.grid_image(viz.masked_rows(self.images, np.asarray(jax.device_get(mask)),
                                              c.model.patch_size, self.mean, self.std, tubelet),
                              scale=viz.default_scale(c.data.image_size),
                              header=viz.target_header(target, clips=bool(tubelet)))
        viz.save_png(grid, fileio.join(self.workdir, "recon", f"step_{step:07d}.png"))
        self.writer.image(step, "reconstructions", grid)
        return {"recon_loss": float(loss)}
      # norm-pix: hidden patches get statistics estimated from the visible ones
      rows = viz.reconstruction_rows(self.images, np.asarray(jax.device_get(pred)),
                                     np.asarray(jax.device_get(mask)), c.model.patch_size,
                                     c.model.norm_pix_loss, self.mean, self.std, tubelet,
                                     bool(c.model.get("norm_pix_per_channel", False)))
      grid = viz.grid_image(viz.display_rows(rows), scale=viz.default_scale(c.data.image_size),
                            header=viz.reconstruction_header(c.model.norm_pix_loss,
                                                             clips=bool(tubelet)))
      viz.save_png(grid, fileio.join(self.workdir, "recon", f"step_{step:07d}.png"))
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


def knn_correct(bank, bank_labels, bank_valid, queries, query_labels, query_valid, *,
                k: int, temperature: float, mesh):
  """``[correct, counted]`` of a weighted k-NN classifier (Wu et al. 2018; DINO's
  ``eval_knn``) over L2-normalised features, as int32 replicated on every device.

  ``bank``/``queries``: ``[chunks, rows, D]`` with ``rows`` split over the mesh's
  data-parallel devices; ``*_labels``, ``*_valid``: ``[chunks, rows]``. A query's
  neighbours are the ``k`` valid bank rows of highest cosine similarity; each votes
  for its label with weight ``exp(sim / temperature)``, the prediction is the label
  with the most weight. Each device scores every query against its own bank rows
  and keeps its local top ``k``; only those (and the queries' features) cross
  devices, never the bank. Call it under ``jax.jit``.
  """
  axes = ("data", "fsdp")

  def local(bank, bank_labels, bank_valid, queries, query_labels, query_valid):
    dim = bank.shape[-1]
    bank, bank_labels, bank_valid = (bank.reshape(-1, dim), bank_labels.reshape(-1),
                                     bank_valid.reshape(-1))
    gather = lambda x: jax.lax.all_gather(x, axes, axis=1, tiled=True)
    queries, query_labels, query_valid = map(gather, (queries, query_labels, query_valid))
    local_k = min(k, bank.shape[0])

    def score(chunk):
      q, labels, valid = chunk
      sims = jnp.matmul(q, bank.T, precision=jax.lax.Precision.HIGHEST)
      sims = jnp.where(bank_valid[None], sims, -jnp.inf)
      sims, index = jax.lax.top_k(sims, local_k)
      neighbours = gather(bank_labels[index])
      sims, best = jax.lax.top_k(gather(sims), k)  # of every device's local top k
      voters = jnp.take_along_axis(neighbours, best, -1)
      weights = jnp.exp((sims - sims[:, :1]) / temperature)  # max-shifted: same argmax
      same = (voters[:, :, None] == voters[:, None]).astype(weights.dtype)
      votes = jnp.einsum("qj,qij->qi", weights, same)  # weight voting for i's label
      predicted = jnp.take_along_axis(voters, jnp.argmax(votes, -1)[:, None], -1)[:, 0]
      return jnp.stack([((predicted == labels) & valid).sum(), valid.sum()])

    return jax.lax.map(score, (queries, query_labels, query_valid)).sum(0)

  rows = jax.sharding.PartitionSpec(None, axes)
  features = jax.sharding.PartitionSpec(None, axes, None)
  # After the all-gathers every device holds the same candidates and counts; the
  # type system cannot see that (all_gather keeps its input device-varying).
  return jax.shard_map(local, mesh=mesh, in_specs=(features, rows, rows) * 2,
                       out_specs=jax.sharding.PartitionSpec(), check_vma=False)(
      bank, bank_labels, bank_valid, queries, query_labels, query_valid)


class KnnMonitor:
  """k-NN top-1 of the encoder's features while pretraining (``config.monitor``).

  Features: ``probe.pooled_features`` (all patches visible, patch tokens mean-pooled),
  L2-normalised, computed over the mesh on every process; the bank (the first
  ``bank_size`` images of ``data.split``) stays a sharded global array and
  ``knn_correct`` scores the queries (the first ``query_size`` of
  ``data.eval_split``) against it; only the counts come back to the host. Logged as
  ``monitor/knn_top1``.
  """

  name = "knn_monitor"

  def __init__(self, config, model, mesh):
    m = config.monitor
    self.every = int(m.every_steps)
    self.mesh = mesh
    self.bank = ShardedSplit(config.data, config.data.split, mesh, config.batch_size,
                             m.bank_size)
    self.queries = ShardedSplit(config.data, config.data.eval_split, mesh,
                                config.batch_size, m.query_size)
    batch_rows = sharding_lib.batch_sharding(mesh, 2)
    stacked = {n: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        None, ("data", "fsdp"), *([None] * (n - 2)))) for n in (2, 3)}

    pixel_stats = pipeline.normalization(config.data)

    def features(params, images):  # images: uint8, normalised here
      images = step_lib.to_model_input(images, pixel_stats)
      f = probe.pooled_features(model, params, images, "mean").astype(jnp.float32)
      return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    self._features = jax.jit(features, out_shardings=batch_rows)
    self._stack = jax.jit(lambda xs: jnp.stack(xs), out_shardings=stacked[3])
    self._stack_rows = jax.jit(lambda xs: jnp.stack(xs), out_shardings=stacked[2])
    self._knn = jax.jit(functools.partial(knn_correct, k=int(m.k),
                                          temperature=float(m.temperature), mesh=mesh))

  def has_result(self, eval_log: EvalLog) -> bool:
    return eval_log.has("knn_top1")

  def scalars(self, result: dict) -> dict:
    return {"monitor/knn_top1": result["knn_top1"]}

  def embed(self, params, split: ShardedSplit):
    """``(features, labels, valid)`` of a split, each ``[chunks, rows, ...]``, sharded."""
    features, labels, valid = [], [], []
    for images, y, v in split:
      features.append(in_order(self._features(params, images)))
      labels.append(y)
      valid.append(v)
    return (in_order(self._stack(features)), in_order(self._stack_rows(labels)),
            in_order(self._stack_rows(valid)))

  def run(self, state, step: int) -> dict:
    t0 = time.time()
    with jax.set_mesh(self.mesh), sharding_lib.logical_rules():
      bank = self.embed(state.params, self.bank)
      queries = self.embed(state.params, self.queries)
      correct, counted = (int(v) for v in jax.device_get(self._knn(*bank, *queries)))
    top1 = correct / max(counted, 1)
    logging.info("k-NN monitor at step %d: top-1 %.4f (%d queries, %.1f s)", step, top1,
                 counted, time.time() - t0)
    return {"knn_top1": top1}


# --------------------------------------------------------------------- classifiers


class Classification:
  """Top-1 / top-5 over an eval split, sharded over the mesh, process-count independent.

  The eval batch is rounded up to a multiple of the data-parallel size (``ShardedSplit``:
  the extra rows are padding, masked out), so any mesh can evaluate any
  ``eval_batch_size``.
  ``variables_fn(state)`` gives the variables to evaluate; ``extra`` names other
  variable sets (e.g. the EMA weights) reported with a prefix.
  """

  name = "classification"

  def __init__(self, config, model, mesh, every: int, variables_fn, extra=None):
    self.every = int(every)
    self.variables_fn = variables_fn
    self.extra = extra or {}
    self.mesh = mesh
    self.split = ShardedSplit(config.data, config.data.eval_split, mesh,
                              config.eval_batch_size or config.batch_size,
                              config.data.eval_max_examples)
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
    with jax.set_mesh(self.mesh), sharding_lib.logical_rules():
      for arrays in self.split:
        c = in_order(self._counts(variables, *arrays))
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
