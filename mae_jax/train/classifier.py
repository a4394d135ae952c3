"""The classifier task: fine-tuning and linear probing are two configurations of it.

Both run a ``VisionTransformer`` initialised from a pretrained workdir
(``config.init_from``, read by ``mae_jax.models.load``) through the one loop
(``mae_jax.train.loop``); ``config.task`` picks the recipe:

* ``finetune`` (official ``main_finetune.py``): global average pooling + ``fc_norm``,
  AdamW with layer-wise lr decay, warmup + cosine, RandAugment and RandomErasing per
  record, mixup / cutmix with label smoothing per global batch (drawn on the host
  from ``(seed, step)``, applied inside the jitted step, ``mix_batch``), drop path;
  optional EMA of the weights. The checkpoint with the best top-1 is kept.
* ``linprobe`` (official ``main_linprobe.py``): the cls token after the encoder's
  ``norm``, BatchNorm without affine + linear head; only the head trains (the encoder
  output passes through ``stop_gradient`` and the optimizer state covers the head
  alone), LARS; RandomResizedCrop + flip only.

With ``model.tubelet_size > 0`` (``config_lib.video_classifier_defaults``) both take
clips ``[B, T, H, W, C]`` with the video MAE's encoder; the pipeline, mixing and
erasing treat every frame of a clip alike (RandAugment is refused for clips).

Top-1 / top-5 on ``data.eval_split`` every ``eval_every_steps`` (0: every epoch) and
at the end, in ``W/eval.json`` with the best step.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mae_jax import config_lib, config_schema, fileio
from mae_jax.data import finetune_augment, pipeline
from mae_jax.data.sources import open_source
from mae_jax.errors import CheckpointError, ConfigError, UserError
from mae_jax.models import load as load_lib
from mae_jax import stacking
from mae_jax import workdir as workdir_lib
from mae_jax.models import registry
from mae_jax.models.vit import VisionTransformer
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import evaluators as evaluators_lib
from mae_jax.train import loop, optim
from mae_jax.train import step as step_lib
from mae_jax.train.state import ClassifierState
from mae_jax.train.tasks import Built

TASKS = ("finetune", "linprobe")
HEAD = "head"


# =========================================================================== model


def build_classifier(config, *, head_norm: bool | None = None) -> VisionTransformer:
  """The classifier of ``config``; ``head_norm`` defaults to ``task == "linprobe"``."""
  m = config.model
  if head_norm is None:
    head_norm = config.get("task") == "linprobe"
  tubelet = registry.tubelet_size(config)
  use_cls = bool(m.get("use_cls_token", True))
  pos_table = m.get("pos_table", "sincos")
  model = VisionTransformer(
      num_classes=int(config.num_classes), image_size=registry.image_hw(config.data.image_size),
      patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, pool=m.pool, drop_path_rate=float(m.get("drop_path", 0.0)),
      head_init_std=float(m.head_init_std), head_norm=head_norm,
      dtype=registry.dtype(m.dtype), param_dtype=registry.dtype(m.param_dtype),
      attention=m.attention, remat=m.remat, scan_layers=bool(m.get("scan_layers", False)),
      tubelet_size=tubelet,
      num_frames=int(config.data.video.num_frames) if tubelet else 0,
      use_cls_token=use_cls, pos_table=pos_table)
  _ = model.grid   # a ConfigError now if the images or clips do not tile into patches
  return model


def create_state(model, opt_init, mesh, image_shape, seed: int = 0,
                 ema_decay: float | None = None, abstract: bool = False):
  """``(state, shardings)`` of a classifier, created sharded (``abstract``: only the
  sharded shapes)."""
  def init():
    key = jax.random.key(seed)
    variables = model.init({"params": jax.random.fold_in(key, 0)},
                           jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables["params"]
    ema = optax.ema(ema_decay, debias=False).init(params) if ema_decay else {}
    return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=opt_init(params),
                           batch_stats=variables.get("batch_stats", {}), ema=ema)
  state, shardings = step_lib.create_sharded(init, mesh, abstract)
  return (state if abstract else _restart_ema(state)), shardings


def _restart_ema(state: ClassifierState) -> ClassifierState:
  """The weight average (if any) set to the current weights (timm ModelEma's start)."""
  if not state.ema:
    return state
  copy = jax.tree.map(lambda a: jax.device_put(a, a.sharding, may_alias=False), state.params)
  return state.replace(ema=state.ema._replace(ema=copy))


def _ema_decay(config) -> float | None:
  return (float(config.ema.decay) if config.task == "finetune" and config.ema.enabled
          else None)


def optimizer(config, schedule):
  """``(tx, opt_init)`` of the task: LLRD AdamW on every param (fine-tuning), LARS on
  the head alone (linear probe)."""
  if config.task == "finetune":
    tx = optim.adamw_layer_decay(config.optim, schedule, config.model.depth,
                                 scanned=bool(config.model.get("scan_layers", False)))
    return tx, tx.init
  tx = optim.lars(config.optim, schedule)
  return tx, head_only(tx.init)


def head_only(opt_init):
  return lambda params: opt_init(params[HEAD])


# =========================================================================== steps


def mix_batch(images, labels, mix, *, num_classes: int, smoothing: float):
  """timm ``Mixup`` (batch mode) on the global batch, from ``MixInfo.as_vector()``.

  ``images`` (``[B, H, W, C]``, or ``[B, T, H, W, C]`` clips: the same box on every
  frame) are mixed with ``images[::-1]``: pixels inside the cutmix box come
  from the reversed batch, the rest are ``pixel_lam * x + (1 - pixel_lam) * x[::-1]``;
  targets are label-smoothed one-hots mixed by ``target_lam``. Equal to the NumPy
  ``finetune_augment.mixup_cutmix`` for the same draws.
  """
  flipped = images[::-1]
  pixel_lam, target_lam = mix[0], mix[1]
  y0, y1, x0, x1 = mix[2], mix[3], mix[4], mix[5]
  h = jnp.arange(images.shape[-3], dtype=jnp.float32)[:, None]
  w = jnp.arange(images.shape[-2], dtype=jnp.float32)[None, :]
  box = (h >= y0) & (h < y1) & (w >= x0) & (w < x1)
  mixed = images * pixel_lam + flipped * (1.0 - pixel_lam)
  out = jnp.where(box[:, :, None], flipped, mixed.astype(images.dtype))
  off = smoothing / num_classes
  y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off
  return out, y * target_lam + y[::-1] * (1.0 - target_lam)


def erase_batch(images, boxes, key, mode: str = "pixel"):
  """timm RandomErasing on normalised ``[B, H, W, C]`` images (or ``[B, T, H, W, C]``
  clips: the box on every frame), one box per image from
  ``finetune_augment.erase_params`` (``[B, 4]`` top, left, h, w; h = 0: none).

  Inside a box pixels become N(0, 1) noise (``pixel``: per pixel and channel;
  ``rand``: one value per channel; ``const``: 0), as ``finetune_augment.random_erasing``
  does on the host (same boxes, other noise draws).
  """
  b, (h, w, c) = images.shape[0], images.shape[-3:]
  frames = (1,) * (images.ndim - 4)   # a clip's time axis
  top, left, height, width = (boxes[:, i].reshape((b,) + frames + (1, 1)) for i in range(4))
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
  if mode == "pixel":
    fill = jax.random.normal(key, images.shape, images.dtype)
  elif mode == "rand":
    fill = jax.random.normal(key, (b,) + frames + (1, 1, c), images.dtype)
  else:
    fill = jnp.zeros((), images.dtype)
  return jnp.where(inside[..., None], fill, images)


def finetune_step_fn(model, tx, lr_fn, seed: int, ema_decay: float | None,
                     num_classes: int, smoothing: float, pixel_stats=None,
                     erase_mode: str | None = None):
  """``train_step(state, batch)``: normalisation of uint8 images (with
  ``pixel_stats``), random erasing (with ``erase_mode``, boxes in ``batch["erase"]``),
  mixing, soft-target cross-entropy, optional EMA."""
  base_key = jax.random.fold_in(jax.random.key(seed), 3)
  erase_key = jax.random.fold_in(jax.random.key(seed), 4)
  ema_tx = optax.ema(ema_decay, debias=False) if ema_decay else None

  def train_step(state: ClassifierState, batch):
    rng = jax.random.fold_in(base_key, state.step)
    images = step_lib.to_model_input(batch["image"], pixel_stats)
    if erase_mode is not None:
      images = erase_batch(images, batch["erase"], jax.random.fold_in(erase_key, state.step),
                           erase_mode)
    images, targets = mix_batch(images, batch["label"], batch["mix"],
                                num_classes=num_classes, smoothing=smoothing)

    def loss_fn(params):
      logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy(logits, targets).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema_tx is not None:  # the average moves with the optimizer's updates only
      _, new_ema = ema_tx.update(params, state.ema)
      ema = jax.tree.map(lambda new, old: jnp.where(optim.did_update(opt_state), new, old),
                         new_ema, state.ema)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step),
               "param_norm": optax.tree.norm(params)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema=ema), metrics
  return train_step


def linprobe_step_fn(model, tx, lr_fn, pixel_stats=None):
  """``train_step(state, batch)``: only ``params["head"]`` (and BatchNorm stats) move.
  With ``pixel_stats`` the images are uint8, normalised in the step."""

  def train_step(state: ClassifierState, batch):
    images = step_lib.to_model_input(batch["image"], pixel_stats)
    features = model.apply({"params": state.params}, images, train=False,
                           method=model.features)
    features = jax.lax.stop_gradient(features)

    def loss_fn(head):
      logits, updated = model.apply(
          {"params": {**state.params, HEAD: head}, "batch_stats": state.batch_stats},
          features, train=True, method=model.logits, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params[HEAD])
    updates, opt_state = tx.update(grads, state.opt_state, state.params[HEAD])
    params = {**state.params, HEAD: optax.apply_updates(state.params[HEAD], updates)}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step),
               "param_norm": optax.tree.norm(params[HEAD])}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         batch_stats=batch_stats), metrics
  return train_step


# =========================================================================== checks


def validate(config) -> None:
  """The config's values (``mae_jax.config_schema``), then that ``init_from`` exists."""
  config_schema.check(config)
  if config.get("task") not in TASKS:
    raise ConfigError(f"task={config.get('task')!r} must be one of {', '.join(TASKS)}.")
  if config.init_from and not fileio.exists(config.init_from):
    raise CheckpointError(f"config.init_from={config.init_from} does not exist; give a "
                          "pretraining workdir (mae-jax pretrain / mae-jax import).")


def check_num_classes(config) -> None:
  """The dataset's labels must fit the head (a label >= num_classes would be dropped)."""
  source = open_source(config.data, config.data.split)
  known = getattr(source, "num_classes", 0)
  if known and known > config.num_classes:
    raise ConfigError(f"{source.name} has {known} classes but num_classes="
                      f"{config.num_classes}; set --config.num_classes={known}.")
  if known and known < config.num_classes:
    logging.warning("%s has %d classes; the head has num_classes=%d outputs.",
                    source.name, known, config.num_classes)


# =========================================================================== task


class ClassifierTask:
  keep_best = "top1"

  def __init__(self, config, check_data: bool = True):
    validate(config)
    if check_data:
      check_num_classes(config)
    self.config = config
    self.name = config.task
    self.finetune = config.task == "finetune"
    self.model = build_classifier(config)
    self.record_transform = (finetune_augment.train_transform if self.finetune
                             else pipeline.train_transform)
    self.ema_decay = _ema_decay(config)

  def batch_shardings(self, mesh) -> dict:
    """Shardings of ``device_batch``'s dict: images and labels split over the batch;
    fine-tuning adds the mixing draws (replicated) and the erase boxes."""
    shardings = {"image": sharding_lib.batch_sharding(mesh),
                 "label": sharding_lib.batch_sharding(mesh, 1)}
    if self.finetune:
      shardings["mix"] = sharding_lib.replicated(mesh)
      shardings["erase"] = sharding_lib.batch_sharding(mesh, 2)
    return shardings

  def build(self, mesh, schedule, lr_fn, abstract: bool = False,
            step_seed: int | None = None) -> Built:
    c = self.config
    tx, opt_init = optimizer(c, schedule)
    state, shardings = create_state(self.model, opt_init, mesh, registry.input_shape(c),
                                    c.seed, self.ema_decay, abstract)
    pixel_stats = pipeline.normalization(c.data, dataset_required=not abstract)
    if self.finetune:
      aug = c.data.augment
      fn = finetune_step_fn(self.model, tx, lr_fn, c.seed if step_seed is None else step_seed,
                            self.ema_decay, c.num_classes,
                            float(aug.label_smoothing), pixel_stats,
                            aug.remode if aug.reprob > 0 else None)
    else:
      fn = linprobe_step_fn(self.model, tx, lr_fn, pixel_stats)
    batch_shardings = self.batch_shardings(mesh)
    logging.info("classifier %s (%s pooling, %d classes)", c.model.name, c.model.pool,
                 c.num_classes)
    return Built(state, shardings, step_lib.jit_step(fn, mesh, shardings, batch_shardings),
                 batch_shardings)

  def initialize(self, state, mesh):
    """Params from ``config.init_from`` (or as initialised, with a warning)."""
    if not self.config.init_from:
      logging.warning("config.init_from is empty: training from a random initialisation.")
      return state
    tensors, _ = load_lib.load_pretrained(self.config.init_from, state.params,
                                          self.model.grid, sharding_lib.replicated(mesh))
    return _restart_ema(state.replace(params=load_lib.place(tensors, state.params)))

  def abstract_batch(self, shardings: dict) -> dict:
    """What ``device_batch`` returns, as ``ShapeDtypeStruct``s."""
    c = self.config
    b, (h, w) = c.batch_size, registry.image_hw(c.data.image_size)
    erase = finetune_augment.erase_params(np.random.default_rng(0), h, w, 0.0)
    shapes = {"image": (registry.input_shape(c, b), self.pixel_dtype()),
              "label": ((b,), jnp.int32),
              "mix": (finetune_augment.MixInfo(1.0, False, None).as_vector().shape,
                      jnp.float32),
              "erase": ((b,) + erase.shape, erase.dtype)}
    return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=s) for k, s in shardings.items()}

  def pixel_dtype(self):
    """The data's pixel type (uint8 when the dataset is not available here), once."""
    if not hasattr(self, "_pixel_dtype"):
      self._pixel_dtype = pipeline.pixel_dtype(self.config.data, dataset_required=False)
    return self._pixel_dtype

  def device_batch(self, host_batch, step: int, shardings: dict) -> dict:
    c = self.config
    batch = {"image": host_batch["image"], "label": host_batch["label"]}
    if self.finetune:
      batch["erase"] = host_batch["erase"]
      aug = c.data.augment
      # The same draws on every process; the trailing 0 keeps single-process runs
      # of earlier versions on their trajectory.
      rng = np.random.default_rng([c.seed, step, 0])
      batch["mix"] = finetune_augment.draw_mix(
          rng, *registry.image_hw(c.data.image_size), mixup_alpha=aug.mixup,
          cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
          switch_prob=aug.mixup_switch_prob).as_vector()
    return {k: loop.global_array(shardings[k], v,
                                 v.shape if k == "mix" else (c.batch_size,) + v.shape[1:])
            for k, v in batch.items()}

  def evaluators(self, mesh, workdir: str, writer) -> list:
    c = self.config
    every = int(c.eval_every_steps)
    if every == 0:
      every = config_lib.steps_per_epoch(c)
    elif every < 0:  # only at the end: at the last step, where the best one is kept
      every = loop.total_steps(c)[0]
    if self.finetune:
      variables = lambda state: {"params": state.params}
      extra = {"ema": lambda state: {"params": state.ema.ema}} if self.ema_decay else {}
    else:
      variables = lambda state: {"params": state.params, "batch_stats": state.batch_stats}
      extra = {}
    return [evaluators_lib.Classification(c, self.model, mesh, every, variables, extra)]


def train_and_evaluate(config, workdir: str) -> dict:
  """Fine-tunes or linearly probes (``config.task``) in ``workdir``."""
  return loop.run(config, workdir, ClassifierTask(config))


def dry_run(config) -> dict:
  """Memory per device of this config's train step, compiled from shapes only (no
  data read, no ``init_from`` loaded)."""
  return loop.dry_run(config, ClassifierTask(config, check_data=False))


def evaluate(config, workdir: str) -> dict:
  """Top-1 / top-5 of the workdir's latest checkpoint on ``data.eval_split``."""
  task = ClassifierTask(config)
  if fileio.exists(fileio.join(workdir, workdir_lib.CONFIG_FILE)):
    trained = workdir_lib.read_config(workdir)
    if workdir_lib.kind(trained) == "mae":
      raise UserError(f"{workdir} is a pretraining workdir (an MAE); mae-jax evaluate scores "
                      "a fine-tuning or probing workdir: make one with mae-jax finetune "
                      f"(or linprobe) --config.init_from={workdir}.")
    if workdir_lib.modality(trained) != workdir_lib.modality(config):
      workdir_lib.require_modality(
          workdir, trained, workdir_lib.modality(config), "this --config",
          f"Evaluate it with the config it was trained with (e.g. configs/"
          f"{trained.task}_{'video_' if workdir_lib.modality(trained) == 'video' else ''}"
          "fmnist.py, or its config.json's values).")
  return loop.run(config, workdir, task, train=False)


def write_workdir(workdir: str, config, params, batch_stats=None, step: int = 0) -> None:
  """A classifier workdir holding ``params`` (e.g. imported) with a fresh optimizer.

  ``mae-jax finetune`` / ``linprobe`` on it continue from ``step``; ``mae-jax
  evaluate`` evaluates it; ``init_from`` accepts it.
  """
  from mae_jax import checkpoint_io
  from mae_jax import workdir as workdir_lib
  from mae_jax.models.load import place
  from mae_jax.parallel import mesh as mesh_lib
  model = build_classifier(config)
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, model=1), devices=jax.devices()[:1])
  # the optimizer state's structure needs no schedule
  _, opt_init = optimizer(config, lambda count: 0.0)
  ema_decay = _ema_decay(config)
  state, _ = create_state(model, opt_init, mesh, registry.input_shape(config), config.seed,
                          ema_decay)
  flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
  state = state.replace(step=jnp.asarray(step, jnp.int32),
                        params=place(flat(stacking.per_block(params)), state.params))
  if batch_stats:
    state = state.replace(batch_stats=place(flat(batch_stats), state.batch_stats))
  state = _restart_ema(state)
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoint_io.Checkpointer(workdir, with_data=False, async_save=False)
  try:
    ckpt.save(step, state, config.to_dict(), force=True)
  finally:
    ckpt.close()
  logging.info("wrote %s (%s classifier, step %d)", workdir, config.task, step)
