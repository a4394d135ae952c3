"""End-to-end fine-tuning of a pretrained encoder as a classifier, top to bottom.

The official MAE recipe (``main_finetune.py``): ViT with global average pooling +
``fc_norm``, AdamW with layer-wise lr decay, warmup + cosine per step, mixup 0.8 /
cutmix 1.0 with label smoothing 0.1, RandAugment ``rand-m9-mstd0.5-inc1``,
random erasing 0.25, drop path; optional EMA of the weights. Top-1/top-5 on the
validation split every epoch (or every ``eval_every_steps``), the last and the
best in ``W/eval.json``.

Sections: setup, mesh, input, model + optimizer + sharded state, restore or
``init_from``, step, loop, final evaluation. The helpers shared with the linear
probe (``build_classifier``, ``load_pretrained``, ``create_state``, evaluation)
live here too. Re-running on a workdir resumes from its latest checkpoint;
``init_from`` is read only when the workdir has none.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import traverse_util

from mae_jax import config_lib
from mae_jax.data import finetune_augment
from mae_jax.data.sources import open_source
from mae_jax.errors import CheckpointError, ConfigError, NonFiniteLossError
from mae_jax.models import registry
from mae_jax.models.pos_embed import resize_table, sincos_2d
from mae_jax.models.vit import VisionTransformer
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import checkpoint as ckpt_lib
from mae_jax.train import metrics as metrics_lib
from mae_jax.train import optim
from mae_jax.train.pretrain import _Preemption as Preemption
from mae_jax.train.pretrain import total_steps

EVAL_FILE = "eval.json"


# =========================================================================== config


def default_config(variant: str = "B/16") -> ml_collections.ConfigDict:
  """Every key ``mae-jax finetune`` reads, with the official recipe's values (ViT-B)."""
  dims = registry.variant_dims(variant)
  c = ml_collections.ConfigDict()
  c.task = "finetune"
  c.init_from = ""               # pretrain / imported / classifier workdir (or checkpoint dir)
  c.num_classes = 1000
  c.model = ml_collections.ConfigDict(dict(
      name=variant, patch_size=dims["patch_size"], embed_dim=dims["embed_dim"],
      depth=dims["depth"], num_heads=dims["num_heads"], mlp_ratio=dims["mlp_ratio"],
      pool="avg", drop_path=0.1, head_init_std=2e-5, dtype="float32",
      param_dtype="float32", attention="xla", remat="none"))
  c.data = ml_collections.ConfigDict(dict(
      name="imagenet2012", source="tfds", data_dir="", idx_dir="", download=False,
      split="train", eval_split="validation", image_size=224, channels=3, mean=(), std=(),
      num_threads=8, eval_crop_pct=0.875, eval_max_examples=0,
      augment=dict(rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3), hflip=True,
                   rand_augment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel",
                   mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
                   label_smoothing=0.1)))
  c.batch_size = 1024
  c.eval_batch_size = 0          # 0: batch_size
  c.num_train_steps = 0          # > 0 wins over num_epochs
  c.num_epochs = 100
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=5e-4, min_lr=1e-6, warmup_epochs=5, warmup_steps=0, weight_decay=0.05,
      b1=0.9, b2=0.999, layer_decay=0.65, clip_grad_norm=0.0, grad_accum_steps=1))
  c.ema = ml_collections.ConfigDict(dict(enabled=False, decay=0.9999))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, dcn_data=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2, async_save=True))
  c.log_every_steps = 50
  c.eval_every_steps = 0         # 0: once per epoch (and at the end)
  c.seed = 0
  return c


def is_classifier_config(config) -> bool:
  return "num_classes" in config and "task" in config


# =========================================================================== model


def build_classifier(config, *, head_norm: bool = False) -> VisionTransformer:
  m = config.model
  if config.num_classes < 1:
    raise ConfigError(f"num_classes={config.num_classes} must be positive.")
  if m.embed_dim % m.num_heads:
    raise ConfigError(f"model.embed_dim={m.embed_dim} is not divisible by "
                      f"model.num_heads={m.num_heads}.")
  if m.embed_dim % 4:
    raise ConfigError(f"model.embed_dim={m.embed_dim} must be divisible by 4 (sin-cos "
                      "position table).")
  if config.data.image_size % m.patch_size:
    raise ConfigError(f"data.image_size={config.data.image_size} is not divisible by "
                      f"model.patch_size={m.patch_size}.")
  if m.pool not in ("avg", "cls"):
    raise ConfigError(f"model.pool={m.pool!r} must be 'avg' (fine-tuning) or 'cls' "
                      "(linear probe).")
  if not 0.0 <= m.get("drop_path", 0.0) < 1.0:
    raise ConfigError(f"model.drop_path={m.drop_path} must be in [0, 1).")
  return VisionTransformer(
      num_classes=int(config.num_classes), image_size=int(config.data.image_size),
      patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, pool=m.pool, drop_path_rate=float(m.get("drop_path", 0.0)),
      head_init_std=float(m.head_init_std), head_norm=head_norm,
      dtype=registry.dtype(m.dtype), param_dtype=registry.dtype(m.param_dtype),
      attention=m.attention, remat=m.remat)


class ClassifierState(flax.struct.PyTreeNode):
  """What a fine-tune / probe checkpoint holds; ``{}`` where a part is unused."""
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any    # BatchNorm statistics (linear probe)
  ema: Any            # optax.EmaState whose ``ema`` is the weight average (fine-tuning)


def create_state(model, opt_init: Callable, mesh, image_shape, seed: int = 0,
                 ema_decay: float | None = None):
  """``(state, shardings)`` created sharded (eval_shape -> logical rules -> jit init)."""
  def init():
    key = jax.random.key(seed)
    variables = model.init({"params": jax.random.fold_in(key, 0)},
                           jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables["params"]
    ema = optax.ema(ema_decay, debias=False).init(params) if ema_decay else {}
    return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=opt_init(params),
                           batch_stats=variables.get("batch_stats", {}), ema=ema)
  boxed = jax.eval_shape(init)
  shardings = sharding_lib.shardings_of(boxed, mesh)
  with jax.set_mesh(mesh), sharding_lib.logical_rules():
    state = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
  if ema_decay:  # the average starts at the weights (timm ModelEma)
    state = state.replace(ema=state.ema._replace(ema=_copy(state.params)))
  return state, shardings


def _copy(tree):
  return jax.tree.map(lambda a: jax.device_put(a, a.sharding, may_alias=False), tree)


# =========================================================================== init_from


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


def _shape(a) -> tuple:
  return tuple(int(d) for d in np.shape(a))


def _read_state_params(workdir: str, step: int | None):
  """Params of any workdir's checkpoint, onto the first device, without its optimizer."""
  import orbax.checkpoint as ocp
  ckpt = ckpt_lib.Checkpointer(workdir, with_data=False, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{workdir} has no finished checkpoint under "
                            f"{ckpt_lib.CHECKPOINT_DIR}/.")
    meta = ckpt.manager.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            tree)
    restored = ckpt.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
  finally:
    ckpt.close()
  return jax.device_get(restored["params"]), int(step)


def _source_params(path: str):
  """``(params as NumPy, source config, grid, kind)`` of ``init_from``."""
  workdir, step = ckpt_lib._resolve(path)
  src_config = ckpt_lib.read_config(workdir)
  if is_classifier_config(src_config):
    params, step = _read_state_params(workdir, step)
    kind = f"{src_config.task} workdir"
  else:
    loaded = ckpt_lib.load(path)
    params, step = jax.device_get(loaded.params), loaded.step
    kind = "MAE workdir"
  side = src_config.data.image_size // src_config.model.patch_size
  return params, src_config, (side, side), f"{kind} {workdir} (step {step})"


def load_pretrained(path: str, params, grid: tuple[int, int]) -> tuple[dict, dict]:
  """Tensors of ``path`` for the classifier whose (abstract) params are ``params``.

  ``path`` is an MAE workdir (pretrained or ``mae-jax import``-ed), a fine-tune or
  linear-probe workdir, or a ``W/checkpoints/<step>`` directory. Encoder params
  (``patch_embed``, ``cls_token``, ``blocks_*``, and ``norm`` for cls pooling) must
  all be there with the same shapes, else a ``CheckpointError`` lists the
  differences. ``pos_embed`` comes from the checkpoint's table (the fixed sin-cos
  table of an MAE workdir), bicubically resized to ``grid`` as the official code
  does. ``head`` and ``fc_norm`` are taken when present with matching shapes; a
  head for another number of classes is re-initialised with a notice.

  Returns ``(tensors, report)``: NumPy arrays by ``a/b/c`` path for what was
  loaded, and the lists ``loaded``, ``fresh`` (left as initialised) and
  ``ignored`` (checkpoint params the classifier has no use for, e.g. the decoder).
  """
  source, src_config, src_grid, what = _source_params(path)
  src = _flat(source)
  dst = _flat(params)
  tensors, fresh, mismatched, missing = {}, [], [], []

  # The position table: learned in the classifier, a constant of the MAE model.
  if "pos_embed" in source:
    table = np.asarray(source["pos_embed"])[0]
  else:
    table = sincos_2d(src_config.model.embed_dim, src_grid, cls_token=True)
  table = resize_table(table, tuple(grid), num_prefix=1, old_grid=src_grid)[None]
  if src_grid != tuple(grid):
    logging.info("init_from: position table resized %s -> %s (bicubic)", src_grid,
                 tuple(grid))

  reinit_notice = set()
  for name, value in dst.items():
    top = name.split("/")[0]
    candidate = table if name == "pos_embed" else src.get(name)
    if candidate is not None and _shape(candidate) == _shape(value):
      tensors[name] = np.asarray(candidate).astype(value.dtype)
    elif top in ("head", "fc_norm") or (top == "norm" and "norm/scale" not in src):
      fresh.append(name)
      if candidate is not None and top not in reinit_notice:
        reinit_notice.add(top)
        if top == "head":
          logging.warning("init_from: the checkpoint's head is for %d classes, the model "
                          "has num_classes=%d; re-initialising the head.",
                          _shape(candidate)[-1], _shape(value)[-1])
        else:
          logging.warning("init_from: %s has shape %s in the checkpoint but %s here; "
                          "re-initialising %s.", name, list(_shape(candidate)),
                          list(_shape(value)), top)
    elif candidate is not None:
      mismatched.append(f"{name}: checkpoint {list(_shape(candidate))}, model "
                        f"{list(_shape(value))}")
    else:
      missing.append(name)

  extra_blocks = sorted({k.split("/")[0] for k in src if k.startswith("blocks_")} -
                        {k.split("/")[0] for k in dst if k.startswith("blocks_")},
                        key=lambda b: int(b.split("_")[1]))
  if mismatched or missing or extra_blocks:
    m = src_config.model
    more = [f"{len(mismatched) - 6} more shapes differ"] if len(mismatched) > 6 else []
    details = mismatched[:6] + more + (["missing in the checkpoint: " +
                                 ", ".join(_group(missing)[:6])] if missing else [])
    if extra_blocks:
      details.append("checkpoint blocks the model lacks: " + ", ".join(extra_blocks[:6]))
    raise CheckpointError(
        f"config.init_from={path} ({what}) does not fit the model: " + "; ".join(details) +
        f". The checkpoint has model.embed_dim={m.embed_dim}, depth={m.depth}, "
        f"num_heads={m.num_heads}, patch_size={m.patch_size}; set --config.model.* to match.")

  ignored = sorted({k.split("/")[0] for k in src} - {k.split("/")[0] for k in dst})
  if ignored:
    logging.info("init_from: ignoring checkpoint params the classifier does not use: %s",
                 ", ".join(ignored))
  if fresh:
    logging.info("init_from: freshly initialised: %s", ", ".join(_group(fresh)))
  logging.info("init_from: loaded %d tensors from %s", len(tensors), what)
  return tensors, {"loaded": sorted(tensors), "fresh": fresh, "ignored": ignored}


def _group(names) -> list[str]:
  """``head/kernel, head/bias`` -> ``head``: top-level names in order."""
  return list(dict.fromkeys(n.split("/")[0] for n in names))


def place(tensors: dict, params):
  """``params`` with the host ``tensors`` (by ``a/b/c`` path) put on their shardings.

  ``make_array_from_callback`` works when the shardings span several processes.
  """
  def put(path, ref):
    name = "/".join(getattr(k, "key", str(k)) for k in path)
    if name not in tensors:
      return ref
    a = np.asarray(tensors[name], ref.dtype)
    return jax.make_array_from_callback(a.shape, ref.sharding, lambda index: a[index])
  return jax.tree_util.tree_map_with_path(put, params)


# =========================================================================== evaluation


def make_evaluator(model, mesh, data_config, split: str, batch_size: int,
                   max_examples: int = 0):
  """``evaluate(variables) -> {"top1", "top5", "num_examples"}`` over a split."""
  num_batches, batches = finetune_augment.eval_batches(
      data_config, split, global_batch=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=max_examples or None)
  k = min(5, model.num_classes)
  image_sharding = sharding_lib.batch_sharding(mesh)
  vector_sharding = sharding_lib.batch_sharding(mesh, 1)

  @jax.jit
  def counts(variables, images, labels, valid):
    logits = model.apply(variables, images, train=False)
    top = jax.lax.top_k(logits, k)[1]
    hit1 = (top[:, 0] == labels) & valid
    hit5 = jnp.any(top == labels[:, None], axis=-1) & valid
    return jnp.stack([hit1.sum(), hit5.sum(), valid.sum()]).astype(jnp.int32)

  def evaluate(variables) -> dict:
    total = None
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      for batch in batches():
        arrays = [jax.make_array_from_process_local_data(s, batch[n]) for s, n in
                  ((image_sharding, "image"), (vector_sharding, "label"),
                   (vector_sharding, "valid"))]
        c = counts(variables, *arrays)
        total = c if total is None else total + c
    top1, top5, n = (int(v) for v in jax.device_get(total))
    return {"top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "num_examples": n}

  evaluate.num_batches = num_batches
  return evaluate


class EvalLog:
  """``W/eval.json``: the last evaluation (``top1``, ``top5``), the best and a history."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = epath.Path(workdir) / EVAL_FILE
    self.enabled = enabled
    self.data = {"history": []}
    if self.path.exists():
      try:
        self.data = json.loads(self.path.read_text())
      except json.JSONDecodeError:
        logging.warning("%s is not valid JSON; starting a new one", self.path)

  def add(self, step: int, result: dict, extra: dict | None = None) -> dict:
    history = [h for h in self.data.get("history", []) if h["step"] < step]
    history.append({"step": int(step), **result})
    best = max(history, key=lambda h: h["top1"])
    self.data = {**self.data, **result, **(extra or {}), "step": int(step),
                 "best_top1": best["top1"], "best_step": best["step"], "history": history}
    if self.enabled:
      self.path.write_text(json.dumps(self.data, indent=2))
    return self.data


def eval_interval(config, steps_per_epoch: int) -> int:
  return int(config.eval_every_steps) if config.eval_every_steps else steps_per_epoch


def check_finite(step: int, host_metrics: dict, ckpt) -> None:
  if not all(np.isfinite(v) for v in host_metrics.values()):
    ckpt.wait()
    steps = ckpt.all_steps()
    raise NonFiniteLossError(
        f"non-finite loss/gradient at step {step} ({host_metrics}); last good checkpoint: "
        f"{f'step {max(steps)} in {ckpt.directory}' if steps else 'none'}. Lower "
        "optim.base_lr or set optim.clip_grad_norm (e.g. 1.0).")


def validate(config) -> None:
  if config.batch_size <= 0:
    raise ConfigError(f"batch_size={config.batch_size} must be positive.")
  if config.log_every_steps <= 0:
    raise ConfigError("log_every_steps must be positive.")
  if config.init_from and not epath.Path(config.init_from).exists():
    raise CheckpointError(f"config.init_from={config.init_from} does not exist; give a "
                          "pretraining workdir (mae-jax pretrain / mae-jax import).")


def check_num_classes(config) -> None:
  """The dataset's labels must fit the head (a label >= num_classes would be dropped)."""
  known = getattr(open_source(config.data, config.data.split), "num_classes", 0)
  if known and known > config.num_classes:
    raise ConfigError(f"{config.data.name} has {known} classes but num_classes="
                      f"{config.num_classes}; set --config.num_classes={known}.")
  if known and known < config.num_classes:
    logging.warning("%s has %d classes; the head has num_classes=%d outputs.",
                    config.data.name, known, config.num_classes)


def initial_params(config, state, grid) -> tuple[Any, dict]:
  """State params from ``config.init_from`` (or left as initialised, with a warning)."""
  if not config.init_from:
    logging.warning("config.init_from is empty: training from a random initialisation.")
    return state.params, {"loaded": [], "fresh": ["*"], "ignored": []}
  tensors, report = load_pretrained(config.init_from, state.params, grid)
  return place(tensors, state.params), report


# =========================================================================== step


def make_train_step(model, tx, mesh, state_shardings, schedule, seed: int,
                    ema_decay: float | None):
  """``step(state, images, targets) -> (state, metrics)``; soft-target cross-entropy."""
  base_key = jax.random.fold_in(jax.random.key(seed), 3)
  ema_tx = optax.ema(ema_decay, debias=False) if ema_decay else None

  def train_step(state: ClassifierState, images, targets):
    rng = jax.random.fold_in(base_key, state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy(logits, targets).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema_tx is not None:
      _, ema = ema_tx.update(params, state.ema)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema=ema), metrics

  jitted = jax.jit(train_step,
                   in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh),
                                 sharding_lib.batch_sharding(mesh, 2)),
                   out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                   donate_argnums=(0,))

  def step(state, images, targets):
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      return jitted(state, images, targets)
  return step


# =========================================================================== trainer


def train_and_evaluate(config, workdir: str) -> dict:
  # ------------------------------------------------------------------ setup
  validate(config)
  check_num_classes(config)
  is_primary = jax.process_index() == 0
  if is_primary:
    ckpt_lib.save_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_primary)
  num_steps, _ = total_steps(config)
  per_epoch = config_lib.steps_per_epoch(config)
  aug = config.data.augment

  # ------------------------------------------------------------------ mesh
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch(config.batch_size, mesh)

  # ------------------------------------------------------------------ input
  data_iter = finetune_augment.train_iterator(
      config.data, global_batch=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  images_sharding = sharding_lib.batch_sharding(mesh)
  targets_sharding = sharding_lib.batch_sharding(mesh, 2)
  mixing = aug.mixup > 0 or aug.cutmix > 0
  if mixing and (config.batch_size // jax.process_count()) % 2:
    raise ConfigError("mixup/cutmix pair each image with another: batch_size per process "
                      "must be even.")

  def mix(batch, step):
    rng = np.random.default_rng([config.seed, step, jax.process_index()])
    images, targets, _ = finetune_augment.mixup_cutmix(
        batch["image"], batch["label"], rng, num_classes=config.num_classes,
        mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob, smoothing=aug.label_smoothing)
    return images, targets

  # ------------------------------------------------------------------ model + optimizer
  model = build_classifier(config)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, num_steps,
                                          per_epoch)
  tx = optim.adamw_layer_decay(config.optim, schedule, config.model.depth)
  ema_decay = float(config.ema.decay) if config.ema.enabled else None
  image_shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  state, state_shardings = create_state(model, tx.init, mesh, image_shape, config.seed,
                                        ema_decay)
  logging.info("classifier %s (%s pooling, %d classes): %s parameters", config.model.name,
               config.model.pool, config.num_classes,
               f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

  # ------------------------------------------------------------------ restore / init_from
  ckpt = ckpt_lib.Checkpointer(workdir, config.checkpoint.every_steps,
                               config.checkpoint.keep, config.checkpoint.async_save)
  state, start_step = ckpt.restore_latest(state, data_iter)
  if not start_step:
    params, _ = initial_params(config, state, model.grid)
    state = state.replace(params=params)
    if ema_decay:
      state = state.replace(ema=state.ema._replace(ema=_copy(params)))

  # ------------------------------------------------------------------ step + eval
  train_step = make_train_step(model, tx, mesh, state_shardings, schedule, config.seed,
                               ema_decay)
  evaluate = make_evaluator(model, mesh, config.data, config.data.eval_split,
                            config.eval_batch_size or config.batch_size,
                            config.data.eval_max_examples)
  eval_log = EvalLog(workdir, enabled=is_primary)
  config_dict = json.loads(config.to_json_best_effort())
  every_eval = eval_interval(config, per_epoch)

  def run_eval(step):
    t0 = time.time()
    result = evaluate({"params": state.params})
    extra = {}
    if ema_decay:
      ema_result = evaluate({"params": state.ema.ema})
      extra = {"ema_top1": ema_result["top1"], "ema_top5": ema_result["top5"]}
    data = eval_log.add(step, result, extra)
    writer.scalars(step, {"eval_top1": result["top1"], "eval_top5": result["top5"], **extra})
    logging.info("eval at step %d: top-1 %.4f top-5 %.4f (best %.4f at step %d; %d "
                 "images, %.0f s)", step, result["top1"], result["top5"], data["best_top1"],
                 data["best_step"], result["num_examples"], time.time() - t0)
    return data

  # ------------------------------------------------------------------ loop
  progress = metrics_lib.Progress(num_steps, start_step, enabled=is_primary)
  step = start_step
  last_eval = None
  t_log, images_since_log = time.time(), 0
  with Preemption() as preemption:
    while step < num_steps:
      images, targets = mix(next(data_iter), step)
      images = jax.make_array_from_process_local_data(images_sharding, images)
      targets = jax.make_array_from_process_local_data(targets_sharding, targets)
      state, metrics = train_step(state, images, targets)
      step += 1
      images_since_log += config.batch_size

      if step % config.log_every_steps == 0 or step == num_steps:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(step, host, ckpt)
        now = time.time()
        host["img_per_s"] = images_since_log / max(now - t_log, 1e-9)
        t_log, images_since_log = now, 0
        writer.scalars(step, host)
        progress.update(step, {k: host[k] for k in ("loss", "lr", "img_per_s")})

      if step % every_eval == 0 or step == num_steps:
        last_eval = run_eval(step)

      stop = preemption.reached()
      if step % config.checkpoint.every_steps == 0 or step == num_steps or stop:
        check_finite(step, {k: float(v) for k, v in jax.device_get(metrics).items()}, ckpt)
        ckpt.save(step, state, config_dict, data_iter, force=True)
      if stop:
        ckpt.close()
        writer.close()
        logging.info("preempted at step %d; checkpoint saved. Re-run the same command to "
                     "resume.", step)
        return {"preempted_at": step}

  # ------------------------------------------------------------------ final evaluation
  ckpt.close()
  if last_eval is None:
    last_eval = run_eval(step) if "top1" not in eval_log.data else eval_log.data
  writer.close()
  return {k: v for k, v in last_eval.items() if k != "history"}
