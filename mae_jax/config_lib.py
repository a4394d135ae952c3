"""Building blocks for the experiment files in ``configs/``.

Every config file defines ``get_config(arg)`` returning a ``ConfigDict``; ``arg`` is
the text after ``:`` in ``--config=FILE:ARG``, e.g. ``variant=L/16,runlocal``.
"""
from __future__ import annotations

import ml_collections

from mae_jax.errors import ConfigError
from mae_jax.models import registry


def parse_arg(arg: str | None, **defaults):
  """``"variant=B/16,runlocal"`` -> ConfigDict(variant="B/16", runlocal=True, ...).

  Only keys named in ``defaults`` are accepted; values take the default's type.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r}; known: {', '.join(defaults)}.")
    out[key] = _arg_value(key, value if eq else None, defaults[key])
  return ml_collections.ConfigDict(out)


_ARG_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _arg_value(key: str, value: str | None, default):
  """The value of ``key=value`` in a config argument, of the default's type (a bare
  ``key`` is True)."""
  if value is None or isinstance(default, bool):
    words = ("1", "true", "yes", "on", "0", "false", "no", "off")
    if value is not None and value.lower() not in words:
      raise ConfigError(f"config argument {key}={value!r} must be true or false.")
    return value is None or value.lower() in words[:4]
  if default is None:
    return value
  try:
    return type(default)(value.strip())
  except ValueError:
    raise ConfigError(f"config argument {key}={value!r} must be "
                      f"{_ARG_KINDS.get(type(default), type(default).__name__)} "
                      f"(e.g. {key}={default}).") from None


def parse_size(text: str) -> int | tuple[int, int]:
  """``"224"`` -> 224, ``"64x96"`` -> (64, 96): a ``data.image_size`` (height x width)
  in a config argument."""
  try:
    sides = tuple(int(v) for v in str(text).lower().split("x"))
  except ValueError:
    sides = ()
  if len(sides) not in (1, 2):
    raise ConfigError(f"image size {text!r} must be N or HEIGHTxWIDTH, e.g. 224 or 64x96.")
  return sides[0] if len(sides) == 1 else sides


def model_config(variant: str) -> ml_collections.ConfigDict:
  dims = registry.variant_dims(variant)
  return ml_collections.ConfigDict(dict(
      **dims, norm_pix_loss=True, mask_ratio=0.75, dtype="float32", param_dtype="float32",
      attention="xla", remat="none", masking="random", tubelet_size=0, use_cls_token=True,
      pos_table="sincos", decoder_embed_bias=True, norm_pix_per_channel=False,
      decoder_norm_eps=1e-6, scan_layers=False, **objective_defaults()))


def objective_defaults() -> dict:
  """What the decoder predicts and the extra term (``mae_jax.models.targets``).

  ``target``: ``pixels`` (with ``norm_pix_loss``), ``hog`` (MaskFeat; cells of
  ``hog_cell`` pixels, a divisor of the patch size) or ``teacher`` (data2vec 2.0: the
  average of the top ``teacher_top_k`` blocks of an EMA copy of the encoder, its
  momentum rising linearly from ``teacher_momentum[0]`` to ``[1]`` over
  ``teacher_momentum_steps`` optimizer updates, 0: the whole run). ``contrastive`` > 0
  adds that weight of an InfoNCE loss between two masked views of each image
  (temperature ``contrastive_temperature``, a projection to ``contrastive_dim``).
  """
  return dict(target="pixels", hog_cell=8, teacher_top_k=8,
              teacher_momentum=(0.9998, 1.0), teacher_momentum_steps=0,
              contrastive=0.0, contrastive_temperature=0.1, contrastive_dim=256)


def video_defaults(c: ml_collections.ConfigDict, *, tubelet_size: int = 2,
                   num_frames: int = 16) -> ml_collections.ConfigDict:
  """Turns a pretraining config into a video one (MAE-ST): ``t x p x p`` spacetime
  patches, 90% spacetime-agnostic random masking, no cls token, clips of
  ``data.video.num_frames`` frames (``data.image_size`` is the frame size) taken every
  ``stride`` frames of a TFDS video (feature ``video_key``, label ``label_key``;
  ``mae_jax.data.video``). ``seed`` and ``num_items`` shape moving Fashion-MNIST."""
  c.model.update(tubelet_size=tubelet_size, mask_ratio=0.9, use_cls_token=False)
  c.data.video = video_data(num_frames)
  c.probe.features = "mean"
  return c


def video_data(num_frames: int) -> ml_collections.ConfigDict:
  """``data.video`` (keys as ``video_defaults`` describes them)."""
  return ml_collections.ConfigDict(dict(num_frames=num_frames, stride=4, seed=0,
                                        num_items=1, video_key="video", label_key="label"))


def video_classifier_defaults(c: ml_collections.ConfigDict, *, tubelet_size: int = 2,
                              num_frames: int = 16, hf_layout: bool = False
                              ) -> ml_collections.ConfigDict:
  """Turns a fine-tuning / linear-probe config into one on clips, for the encoder of a
  ``video_defaults`` MAE (``hf_layout``: of a ``videomae_layout`` one): ``t x p x p``
  spacetime patches, no cls token, so average pooling (fine-tuning: ``fc_norm``;
  probe: the encoder's ``norm`` then the mean). RandAugment is for images: off."""
  c.model.update(tubelet_size=tubelet_size, use_cls_token=False,
                 pool="avg" if c.task == "finetune" else "mean",
                 pos_table="sinusoid_1d" if hf_layout else "sincos")
  c.data.video = video_data(num_frames)
  if "rand_augment" in c.data.augment:
    c.data.augment.rand_augment = "none"
  return c


def videomae_layout(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The choices Hugging Face ``VideoMAEForPreTraining`` fixes, so the model exports to it."""
  c.model.update(use_cls_token=False, pos_table="sinusoid_1d", decoder_embed_bias=False,
                 norm_pix_per_channel=True, decoder_norm_eps=1e-5)
  return c


def moving_fmnist(c: ml_collections.ConfigDict, canvas: int = 64) -> ml_collections.ConfigDict:
  """``data`` for the embedded moving Fashion-MNIST clips (``canvas`` pixels square),
  with no crops (the items move over the whole canvas; a crop would cut them off)
  and a flip per clip."""
  c.data.update(name="moving_fashion_mnist", source="auto", split="train", eval_split="test",
                image_size=canvas, channels=1, num_threads=0)
  c.data.augment.update(rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=True)
  return c


def profile_defaults() -> ml_collections.ConfigDict:
  """``profile.start_step`` > 0 traces ``num_steps`` steps after it into ``W/profile``."""
  return ml_collections.ConfigDict(dict(start_step=0, num_steps=3))


def nonfinite_defaults() -> dict:
  """``optim.on_nonfinite`` (``stop`` | ``recover``) and ``optim.recover.*``: what a run
  does at a non-finite step (``mae_jax.train.recovery``)."""
  return dict(on_nonfinite="stop", recover=dict(skip_batches=0, lr_factor=1.0,
                                                cooldown_steps=0, max_events=3))


def monitor_defaults() -> ml_collections.ConfigDict:
  """The k-NN representation monitor of pretraining (``evaluators.KnnMonitor``).

  Every ``every_steps`` (0: off) a weighted k-NN classifier (cosine similarity of the
  mean-pooled, L2-normalised encoder features, votes ``exp(sim / temperature)``)
  with the first ``bank_size`` images of ``data.split`` as memory bank scores the
  first ``query_size`` images of ``data.eval_split``; logged as ``monitor/knn_top1``.
  """
  return ml_collections.ConfigDict(dict(every_steps=0, bank_size=10000, query_size=2000,
                                        k=20, temperature=0.07))


def pretrain_defaults(variant: str) -> ml_collections.ConfigDict:
  """Every key a pretraining run reads, with the official MAE recipe's values."""
  c = ml_collections.ConfigDict()
  c.model = model_config(variant)
  c.data = ml_collections.ConfigDict(dict(
      name="imagenet2012", source="tfds", data_dir="", idx_dir="", download=False,
      split="train", eval_split="validation", image_size=224, channels=3,
      image_key="image", mean=(), std=(), num_threads=8, skip_corrupt=False,
      repeated_sampling=1,
      augment=dict(rrc_scale=(0.2, 1.0), rrc_ratio=(3 / 4, 4 / 3),
                   rrc_sampler="torchvision", rrc_backend="pil", hflip=True)))
  c.batch_size = 4096
  c.num_train_steps = 0        # > 0 wins over num_epochs
  c.num_epochs = 800
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1.5e-4, min_lr=0.0, warmup_epochs=40, warmup_steps=0, weight_decay=0.05,
      b1=0.9, b2=0.95, clip_grad_norm=0.0, grad_accum_steps=1, moments_dtype="float32",
      **nonfinite_defaults()))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, dcn_data=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  c.log_every_steps = 50
  c.eval_every_steps = 5000     # reconstruction grids
  c.num_recon_images = 8
  c.seed = 0
  c.device_memory_gib = 0.0    # > 0: the memory check's device size (0: detected)
  c.compile_cache_dir = "auto"  # JAX's persistent compilation cache (mae_jax.compile_cache)
  c.probe = ml_collections.ConfigDict(dict(enabled=False, max_train=60000, max_test=10000,
                                           steps=300, lr=0.1, weight_decay=1e-4,
                                           features="mean"))  # mean, cls or patches
  c.monitor = monitor_defaults()
  c.profile = profile_defaults()
  return c


def finetune_defaults(variant: str = "B/16") -> ml_collections.ConfigDict:
  """Every key ``mae-jax finetune`` reads, with the official recipe's values (ViT-B).

  ``task`` picks the classifier recipe (``mae_jax.train.classifier``).
  """
  dims = registry.variant_dims(variant)
  c = ml_collections.ConfigDict()
  c.task = "finetune"
  c.init_from = ""               # pretrain / imported / classifier workdir (or checkpoint dir)
  c.num_classes = 1000
  c.model = ml_collections.ConfigDict(dict(
      name=variant, patch_size=dims["patch_size"], embed_dim=dims["embed_dim"],
      depth=dims["depth"], num_heads=dims["num_heads"], mlp_ratio=dims["mlp_ratio"],
      pool="avg", drop_path=0.1, head_init_std=2e-5, dtype="float32",
      param_dtype="float32", attention="xla", remat="none", scan_layers=False,
      # clips: video_classifier_defaults
      tubelet_size=0, use_cls_token=True, pos_table="sincos"))
  c.data = ml_collections.ConfigDict(dict(
      name="imagenet2012", source="tfds", data_dir="", idx_dir="", download=False,
      split="train", eval_split="validation", image_size=224, channels=3, image_key="image",
      mean=(), std=(), num_threads=8, eval_crop_pct=0.875, eval_max_examples=0, skip_corrupt=False,
      augment=dict(rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3),
                   rrc_sampler="torchvision", rrc_backend="pil", hflip=True,
                   rand_augment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel",
                   mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
                   label_smoothing=0.1)))
  c.batch_size = 1024
  c.eval_batch_size = 0          # 0: batch_size
  c.num_train_steps = 0          # > 0 wins over num_epochs
  c.num_epochs = 100
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=5e-4, min_lr=1e-6, warmup_epochs=5, warmup_steps=0, weight_decay=0.05,
      b1=0.9, b2=0.999, layer_decay=0.65, clip_grad_norm=0.0, grad_accum_steps=1,
      **nonfinite_defaults()))
  c.ema = ml_collections.ConfigDict(dict(enabled=False, decay=0.9999))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, dcn_data=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2, async_save=True))
  c.log_every_steps = 50
  c.eval_every_steps = 0         # 0: once per epoch, -1: only at the end (always at the end)
  c.seed = 0
  c.device_memory_gib = 0.0      # > 0: the memory check's device size (0: detected)
  c.compile_cache_dir = "auto"    # JAX's persistent compilation cache (mae_jax.compile_cache)
  c.profile = profile_defaults()
  return c


def linprobe_defaults(variant: str = "B/16") -> ml_collections.ConfigDict:
  """Every key ``mae-jax linprobe`` reads, with the official recipe's values (ViT-B)."""
  c = finetune_defaults(variant)
  c.task = "linprobe"
  c.model.update(pool="cls", drop_path=0.0, head_init_std=0.01)
  # the official probe's crop: util/crop.RandomResizedCrop (one draw, clamped)
  c.data.augment = ml_collections.ConfigDict(dict(rrc_scale=(0.08, 1.0),
                                                  rrc_ratio=(3 / 4, 4 / 3),
                                                  rrc_sampler="clamped", rrc_backend="pil",
                                                  hflip=True))
  c.batch_size = 16384
  c.num_epochs = 90
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=0.1, min_lr=0.0, warmup_epochs=10, warmup_steps=0, weight_decay=0.0,
      momentum=0.9, trust_coefficient=0.001, grad_accum_steps=1, **nonfinite_defaults()))
  del c.ema
  return c


def shrink_classifier_for_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``runlocal``: a classifier config shrunk to two tiny steps on a laptop CPU
  (Fashion-MNIST at 32x32x3 stands in for ImageNet)."""
  c.model.update(embed_dim=64, depth=2, num_heads=2, patch_size=16, dtype="float32")
  c.data.update(name="fashion_mnist", source="auto", eval_split="test", image_size=32,
                channels=3, num_threads=0, eval_max_examples=16)
  c.num_classes = 10
  c.batch_size = 8
  c.num_train_steps = 2
  c.optim.warmup_steps = 1
  c.checkpoint.every_steps = 2
  c.log_every_steps = 1
  return c


def steps_per_epoch(config) -> int:
  """Batches in one pass over ``data.split`` (``data.repeated_sampling`` times its size)."""
  from mae_jax.data.pipeline import repeated_sampling
  from mae_jax.data.sources import open_source
  examples = len(open_source(config.data, config.data.split)) * repeated_sampling(config.data)
  return max(1, examples // config.batch_size)
