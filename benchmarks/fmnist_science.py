"""The paper's headline on Fashion-MNIST in minutes on one accelerator, with jax, flax and
optax only: MAE pretraining + fine-tuning against the same ViT trained from scratch with
the same fine-tuning budget, over seeds, beside logistic regression on the raw pixels.

``device_suite.py --science`` runs it. The recipes are those of the demo
(``configs/pretrain_fmnist.py``: the ``tiny/4`` MAE, batch 128, base lr 1.5e-3, 5%
warmup, cosine to 1e-5, plain-pixel targets, crops of 35-100%) and of
``configs/finetune_fmnist.py`` (batch 64, base lr 4e-3, layer decay 0.75 -- 1.0 from
scratch, as ``paper_trends.py --mae_vs_scratch`` -- label smoothing 0.1, crops of
90-100%, AdamW (0.9, 0.999), weight decay 0.05, average pooling + ``fc_norm``), built
from plain attribute dicts instead of ml_collections, with the whole dataset on the
device and the crops + flips drawn there (``jax.image.scale_and_translate``, bilinear;
the trainer crops on the host with PIL's bicubic). Pretraining runs as many whole
epochs as fit its share of the budget; every fine-tune gets the same number of steps,
as many as fit. Rows: ``pretrain``, one ``finetune`` per arm and seed (top-1 on the
10,000 test images), ``raw_pixels_logreg``, ``summary`` (mean, sample std, MAE minus
scratch against twice its standard error: ``paper_trends.headline_verdict``).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

PRETRAIN = dict(variant="tiny/4", batch=128, base_lr=1.5e-3, min_lr=1e-5, mask_ratio=0.75,
                crop_scale=(0.35, 1.0))
FINETUNE = dict(batch=64, base_lr=4e-3, min_lr=1e-6, layer_decay=0.75, scratch_layer_decay=1.0,
                label_smoothing=0.1, crop_scale=(0.9, 1.0), weight_decay=0.05)
SEEDS = (0, 1, 2)
SMOKE_DIMS = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                  decoder_num_heads=2)
# shares of the budget: pretraining, all fine-tunes; the rest compiles and evaluates
PRETRAIN_SHARE, FINETUNE_SHARE = 0.35, 0.45


def random_resized_crop(key, images, scale, ratio=(3 / 4, 4 / 3)):
  """Per image: a box of ``scale`` x the area and log-uniform aspect ``ratio`` (clamped
  to the image), resized back to the image's size (bilinear, antialiased), then a
  horizontal flip with probability 1/2. ``images``: float ``[B, H, W, C]``."""
  import jax
  import jax.numpy as jnp
  b, h, w, c = images.shape

  def one(key, image):
    ka, kr, kt, kl, kf = jax.random.split(key, 5)
    area = jax.random.uniform(ka, minval=scale[0], maxval=scale[1]) * h * w
    aspect = jnp.exp(jax.random.uniform(kr, minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    ch = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
    cw = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
    top, left = jax.random.uniform(kt) * (h - ch), jax.random.uniform(kl) * (w - cw)
    zoom = jnp.stack([h / ch, w / cw])
    out = jax.image.scale_and_translate(image, (h, w, c), (0, 1), zoom,
                                        -jnp.stack([top, left]) * zoom, "linear")
    return jnp.where(jax.random.uniform(kf) < 0.5, out[:, ::-1], out)

  return jax.vmap(one)(jax.random.split(key, b), images)


def batches(data, labels, batch: int, scale, stats):
  """``fn(perm, i, key) -> (images, labels)``: batch ``i`` of the permutation ``perm``,
  cropped, flipped and normalised on the device (jitted)."""
  import jax
  import jax.numpy as jnp
  mean, std = (jnp.asarray(v, jnp.float32) for v in stats)

  @jax.jit
  def fn(perm, i, key):
    idx = jax.lax.dynamic_slice(perm, (i * batch,), (batch,))
    images = data[idx].astype(jnp.float32) / 255.0
    images = random_resized_crop(key, images, scale)
    return (images - mean) / std, labels[idx]

  return fn


class Epochs:
  """Batch indices: a new permutation of the training set every epoch."""

  def __init__(self, key, n: int, batch: int):
    self.key, self.n, self.per_epoch = key, n, n // batch
    self.perm, self.epoch = None, -1

  def at(self, step: int):
    import jax
    epoch = step // self.per_epoch
    if epoch != self.epoch:
      self.perm = jax.random.permutation(jax.random.fold_in(self.key, epoch), self.n)
      self.epoch = epoch
    return self.perm, step % self.per_epoch


def model_dims(smoke: bool) -> dict:
  """The demo's ``tiny/4`` sizes (``SMOKE_DIMS`` applied for a smoke run)."""
  from mae_jax.models import registry
  return dict(registry.variant_dims(PRETRAIN["variant"]), **(SMOKE_DIMS if smoke else {}))


def pretrain(data, stats, *, steps: int | None, budget_s: float, dtype: str, emit,
             dims: dict):
  """The demo MAE for whole epochs (as many as fit ``budget_s``, or ``steps``)."""
  import jax
  import pretrain_throughput as pt
  from mae_jax.models import registry
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.train import optim
  from mae_jax.train import step as step_lib
  c = PRETRAIN
  model_cfg = pt.Config(dims, norm_pix_loss=False,
                        mask_ratio=c["mask_ratio"], dtype=dtype, param_dtype="float32",
                        attention="xla", remat="none")
  config = pt.Config(model=model_cfg, data=pt.Config(image_size=28, channels=1), seed=0)
  model = registry.build_mae(config)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "model": 1})
  epochs = Epochs(jax.random.key(10), len(data), c["batch"])
  get = batches(jax.device_put(data), jax.device_put(np.zeros(len(data), np.int32)),
                c["batch"], c["crop_scale"], stats)

  def build(total):
    optim_cfg = pt.Config(base_lr=c["base_lr"], min_lr=c["min_lr"], warmup_epochs=0,
                          warmup_steps=max(total // 20, 1), weight_decay=0.05, b1=0.9,
                          b2=0.95, clip_grad_norm=0.0, grad_accum_steps=1,
                          moments_dtype="float32")
    schedule = optim.learning_rate_schedule(optim_cfg, c["batch"], total)
    tx = optim.adamw(optim_cfg, schedule)
    state, shardings = step_lib.create_train_state(model, tx, mesh, (1, 28, 28, 1), 0)
    return state, step_lib.make_train_step(model, tx, mesh, shardings, schedule, seed=0)

  def run(state, step, n):
    metrics = None
    for i in range(n):
      perm, j = epochs.at(i)
      images, _ = get(perm, j, jax.random.fold_in(jax.random.key(11), i))
      state, metrics = step(state, images)
    jax.block_until_ready(state)
    return state, metrics

  t0 = time.perf_counter()
  probe_ms = None
  if steps is None:   # time the step (after compiling) to see how many epochs fit
    state, step = build(10_000)
    run(state, step, 3)
    start = time.perf_counter()
    state, _ = run(state, step, 30)
    probe_ms = 1e3 * (time.perf_counter() - start) / 30
    left = budget_s - (time.perf_counter() - t0)
    n_epochs = max(1, int(left / (probe_ms / 1e3 * epochs.per_epoch)))
    steps = n_epochs * epochs.per_epoch
  epochs.epoch = -1
  state, step = build(steps)
  start = time.perf_counter()
  state, metrics = run(state, step, steps)
  seconds = time.perf_counter() - start
  emit(dict(impl="science", what="pretrain", model="vit-tiny/4", dims=dims, steps=steps,
            epochs=steps / epochs.per_epoch, batch=c["batch"], train_images=len(data),
            loss=float(metrics["loss"]), seconds=seconds, step_ms=1e3 * seconds / steps,
            probe_step_ms=probe_ms, dtype=dtype, total_seconds=time.perf_counter() - t0))
  return model, state.params


def classifier(dtype: str, d: dict):
  from mae_jax.models.registry import dtype as dtype_of
  from mae_jax.models.vit import VisionTransformer
  return VisionTransformer(num_classes=10, image_size=28, patch_size=d["patch_size"],
                           embed_dim=d["embed_dim"], depth=d["depth"], num_heads=d["num_heads"],
                           mlp_ratio=d["mlp_ratio"], pool="avg", drop_path_rate=0.0,
                           head_init_std=2e-5, dtype=dtype_of(dtype)), d["depth"]


def finetune_step(model, tx):
  import jax
  import optax
  smoothing = FINETUNE["label_smoothing"]

  def step(state, images, labels):
    params, opt_state = state

    def loss_fn(p):
      logits = model.apply({"params": p}, images, train=True)
      targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=(0,))


def predictor(model, stats):
  """``predict(params, uint8 images) -> classes`` (jitted once)."""
  import jax
  import jax.numpy as jnp
  mean, std = (jnp.asarray(v, jnp.float32) for v in stats)
  return jax.jit(lambda params, x: jnp.argmax(
      model.apply({"params": params}, (x.astype(jnp.float32) / 255 - mean) / std), -1))


def top1(predict, params, images, labels, batch: int = 1000) -> float:
  right = sum(int((np.asarray(predict(params, images[i:i + batch])) == labels[i:i + batch])
                  .sum()) for i in range(0, len(images), batch))
  return right / len(images)


def finetunes(encoder, data, labels, test, stats, *, steps: int | None, budget_s: float,
              seeds, dtype: str, emit, dims: dict):
  """Fine-tunes from the MAE encoder and from scratch, per seed, the same steps each."""
  import jax
  from flax import linen as nn
  import pretrain_throughput as pt
  from mae_jax.train import optim
  c = FINETUNE
  model, depth = classifier(dtype, dims)
  get = batches(jax.device_put(data), jax.device_put(labels), c["batch"], c["crop_scale"],
                stats)
  predict = predictor(model, stats)
  init = jax.jit(lambda key: nn.unbox(model.init(key, np.zeros((1, 28, 28, 1), np.float32)))
                 ["params"])

  def tx_for(arm, total):
    cfg = pt.Config(base_lr=c["base_lr"], min_lr=c["min_lr"], warmup_epochs=0,
                    warmup_steps=max(total // 20, 1), weight_decay=c["weight_decay"], b1=0.9,
                    b2=0.999, clip_grad_norm=0.0, grad_accum_steps=1,
                    layer_decay=c["layer_decay"] if arm == "mae" else c["scratch_layer_decay"])
    return optim.adamw_layer_decay(cfg, optim.learning_rate_schedule(cfg, c["batch"], total),
                                   depth)

  def start(arm, seed):
    params = init(jax.random.key(100 + seed))
    if arm == "mae":   # the encoder's names are the classifier's (pos_embed: the same table)
      params = dict(params, **{k: v for k, v in encoder.items()
                               if k in params and k not in ("norm",)})
    return params

  def train(arm, seed, step_fn, tx, n):
    params = start(arm, seed)
    state = (params, tx.init(params))
    epochs = Epochs(jax.random.key(200 + seed), len(data), c["batch"])
    loss = None
    for i in range(n):
      perm, j = epochs.at(i)
      images, y = get(perm, j, jax.random.fold_in(jax.random.key(300 + seed), i))
      state, loss = step_fn(state, images, y)
    jax.block_until_ready(state)
    return state[0], loss

  arms = ("mae", "scratch")
  probe_ms = None
  if steps is None:   # time the step to give every run the same number of steps
    tx = tx_for("mae", 10_000)
    fn = finetune_step(model, tx)
    train("mae", 0, fn, tx, 3)
    t = time.perf_counter()
    train("mae", 0, fn, tx, 30)
    probe_ms = 1e3 * (time.perf_counter() - t) / 30
    steps = max(50, int(budget_s / (len(seeds) * len(arms)) / (probe_ms / 1e3)) // 10 * 10)
  results = {arm: [] for arm in arms}
  for arm in arms:
    tx = tx_for(arm, steps)
    fn = finetune_step(model, tx)
    for seed in seeds:
      t = time.perf_counter()
      params, loss = train(arm, seed, fn, tx, steps)
      seconds = time.perf_counter() - t
      acc = top1(predict, params, test[0], test[1])
      results[arm].append(acc)
      emit(dict(impl="science", what="finetune", init=arm, seed=seed, top1=acc,
                test_images=len(test[1]), steps=steps, batch=c["batch"],
                epochs=steps * c["batch"] / len(data), loss=float(loss), seconds=seconds,
                probe_step_ms=probe_ms, layer_decay=c["layer_decay"] if arm == "mae"
                else c["scratch_layer_decay"]))
  return results


def run(emit, *, smoke: bool, idx_dir: str, budget_s: float = 300, seeds=SEEDS) -> None:
  """The whole comparison; rows through ``emit``. ``smoke``: a few steps on a few images."""
  import jax
  from mae_jax.data import sources
  from mae_jax.data.stats import FASHION_MNIST_MEAN, FASHION_MNIST_STD
  import paper_trends
  from mae_jax.train import probe
  try:
    train = sources.fashion_mnist_idx(idx_dir, "train")
    test = sources.fashion_mnist_idx(idx_dir, "test")
  except (OSError, ValueError) as e:
    emit(dict(impl="science", skipped=f"Fashion-MNIST not readable in {idx_dir} "
              f"({type(e).__name__}); pass --fmnist_dir"))
    return
  t0 = time.perf_counter()
  stats = (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
  x, y = train.images, train.labels
  tx_, ty = test.images, test.labels
  if smoke:
    x, y, tx_, ty, seeds = x[:512], y[:512], tx_[:200], ty[:200], seeds[:2]
  dtype = "float32"
  dims = model_dims(smoke)
  _, encoder = pretrain(x, stats, steps=2 if smoke else None, emit=emit, dtype=dtype,
                        budget_s=PRETRAIN_SHARE * budget_s, dims=dims)
  encoder = jax.device_get(encoder)
  left = budget_s - (time.perf_counter() - t0)
  results = finetunes(encoder, x, y, (tx_, ty), stats, steps=2 if smoke else None,
                      budget_s=min(FINETUNE_SHARE * budget_s, 0.8 * left), seeds=seeds,
                      dtype=dtype, emit=emit, dims=dims)
  flat = lambda a: a.reshape(len(a), -1).astype(np.float32)
  t = time.perf_counter()
  pixels = probe.logistic_regression_top1(flat(x), y, flat(tx_), ty, 10,
                                          steps=20 if smoke else 300)
  emit(dict(impl="science", what="raw_pixels_logreg", top1=pixels, train_images=len(y),
            test_images=len(ty), steps=20 if smoke else 300, seconds=time.perf_counter() - t))
  summary = {arm: paper_trends.seed_summary(v) for arm, v in results.items()}
  emit(dict(impl="science", what="summary",
            **{f"{arm}_{k}": v for arm, s in summary.items() for k, v in s.items()},
            raw_pixels_top1=pixels, **paper_trends.headline_verdict(summary["mae"],
                                                                     summary["scratch"]),
            total_seconds=time.perf_counter() - t0))
