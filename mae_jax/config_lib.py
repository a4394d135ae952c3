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
    default = defaults[key]
    if not eq:
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes", "on")
    else:
      out[key] = type(default)(value) if default is not None else value
  return ml_collections.ConfigDict(out)


def model_config(variant: str) -> ml_collections.ConfigDict:
  dims = registry.variant_dims(variant)
  return ml_collections.ConfigDict(dict(
      **dims, norm_pix_loss=True, mask_ratio=0.75, dtype="float32", param_dtype="float32",
      attention="xla", remat="none"))


def pretrain_defaults(variant: str) -> ml_collections.ConfigDict:
  """Every key a pretraining run reads, with the official MAE recipe's values."""
  c = ml_collections.ConfigDict()
  c.model = model_config(variant)
  c.data = ml_collections.ConfigDict(dict(
      name="imagenet2012", source="tfds", data_dir="", idx_dir="", download=False,
      split="train", eval_split="validation", image_size=224, channels=3,
      mean=(), std=(), num_threads=8,
      augment=dict(rrc_scale=(0.2, 1.0), rrc_ratio=(3 / 4, 4 / 3), hflip=True)))
  c.batch_size = 4096
  c.num_train_steps = 0        # > 0 wins over num_epochs
  c.num_epochs = 800
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1.5e-4, min_lr=0.0, warmup_epochs=40, warmup_steps=0, weight_decay=0.05,
      b1=0.9, b2=0.95, clip_grad_norm=0.0, grad_accum_steps=1, moments_dtype="float32"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, dcn_data=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  c.log_every_steps = 50
  c.eval_every_steps = 5000     # reconstruction grids
  c.num_recon_images = 8
  c.seed = 0
  c.probe = ml_collections.ConfigDict(dict(enabled=False, max_train=60000, max_test=10000,
                                           steps=300, lr=0.1, weight_decay=1e-4))
  return c


def steps_per_epoch(config) -> int:
  from mae_jax.data.sources import open_source
  return max(1, len(open_source(config.data, config.data.split)) // config.batch_size)
