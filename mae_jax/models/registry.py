"""Named model sizes. A variant is ``SIZE/PATCH``: ``tiny/4``, ``S/16``, ``B/16``, ``L/16``, ``H/14``.

Encoder sizes are the ViT paper's; every size but ``tiny`` uses the official MAE
decoder (512 wide, 8 blocks, 16 heads). ``tiny`` is for CPU runs and tests.
"""
from __future__ import annotations

import jax.numpy as jnp

from mae_jax.errors import ConfigError
from mae_jax.sizes import image_hw

SIZES = {
    # name: (embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_heads)
    "tiny": (128, 4, 4, 64, 2, 4),
    "S": (384, 12, 6, 512, 8, 16),
    "B": (768, 12, 12, 512, 8, 16),
    "L": (1024, 24, 16, 512, 8, 16),
    "H": (1280, 32, 16, 512, 8, 16),
}
ALIASES = {"small": "S", "base": "B", "large": "L", "huge": "H", "Ti": "tiny"}
PATCH_SIZES = (4, 7, 8, 14, 16)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_variant(variant: str) -> tuple[str, int]:
  """``"B/16"`` -> ``("B", 16)``; a clear error for anything else."""
  try:
    size, patch = variant.split("/")
    size = ALIASES.get(size, size)
    patch = int(patch)
  except ValueError:
    raise ConfigError(f"model variant {variant!r} is not of the form SIZE/PATCH, "
                      f"e.g. B/16; sizes: {', '.join(SIZES)}.") from None
  if size not in SIZES:
    raise ConfigError(f"unknown model size {size!r} in variant {variant!r}; "
                      f"choose one of {', '.join(SIZES)} (or {', '.join(ALIASES)}).")
  if patch <= 0:
    raise ConfigError(f"patch size must be positive in variant {variant!r}.")
  return size, patch


def variant_dims(variant: str) -> dict:
  size, patch = parse_variant(variant)
  d, depth, heads, dd, ddepth, dheads = SIZES[size]
  return dict(name=variant, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads,
              decoder_embed_dim=dd, decoder_depth=ddepth, decoder_num_heads=dheads,
              mlp_ratio=4.0)


def dtype(name: str):
  if name not in DTYPES:
    raise ConfigError(f"dtype {name!r} is unknown; choose one of {', '.join(DTYPES)}.")
  return DTYPES[name]


def tubelet_size(config) -> int:
  """Frames per spacetime patch; 0 for an image model."""
  return int(config.model.get("tubelet_size", 0))


def input_shape(config, batch: int = 1) -> tuple[int, ...]:
  """``[B, H, W, C]`` images, or ``[B, T, H, W, C]`` clips for a video model."""
  (h, w), channels = image_hw(config.data.image_size), int(config.data.channels)
  if tubelet_size(config):
    return (batch, int(config.data.video.num_frames), h, w, channels)
  return (batch, h, w, channels)


def patch_grid(config) -> tuple[int, ...]:
  """``(gh, gw)``, or ``(gt, gh, gw)`` for a video model; a clear error if it does not tile."""
  from mae_jax.models import masking
  shape, patch = input_shape(config)[1:-1], int(config.model.patch_size)
  if tubelet_size(config):
    return masking.clip_grid(shape, patch, tubelet_size(config))
  return masking.grid_size(shape, patch)


def build_mae(config):
  """``MaskedAutoencoder`` from a full config (``config.model`` + ``config.data``), whose
  values ``mae_jax.config_schema`` accepts."""
  from mae_jax.models.mae import MaskedAutoencoder
  from mae_jax.models import masking
  m = config.model
  grid = patch_grid(config)
  # workdirs written before model.masking existed masked at random
  masking.check_strategy(m.get("masking", "random"), m.mask_ratio, grid)
  video = dict(tubelet_size=tubelet_size(config), masking=m.get("masking", "random"),
               use_cls_token=bool(m.get("use_cls_token", True)),
               pos_table=m.get("pos_table", "sincos"),
               decoder_embed_bias=bool(m.get("decoder_embed_bias", True)),
               norm_pix_per_channel=bool(m.get("norm_pix_per_channel", False)),
               decoder_norm_eps=float(m.get("decoder_norm_eps", 1e-6)))
  # workdirs written before model.target existed predicted pixels, with no contrastive term
  objective = dict(target=m.get("target", "pixels"), hog_cell=int(m.get("hog_cell", 8)),
                   teacher_top_k=int(m.get("teacher_top_k", 1)),
                   contrastive=float(m.get("contrastive", 0.0)),
                   contrastive_temperature=float(m.get("contrastive_temperature", 0.1)),
                   contrastive_dim=int(m.get("contrastive_dim", 256)))
  return MaskedAutoencoder(**video, **objective,
      patch_size=m.patch_size, in_chans=config.data.channels, embed_dim=m.embed_dim,
      depth=m.depth, num_heads=m.num_heads, decoder_embed_dim=m.decoder_embed_dim,
      decoder_depth=m.decoder_depth, decoder_num_heads=m.decoder_num_heads,
      mlp_ratio=m.mlp_ratio, norm_pix_loss=m.norm_pix_loss, mask_ratio=m.mask_ratio,
      dtype=dtype(m.dtype), param_dtype=dtype(m.param_dtype), attention=m.attention,
      remat=m.remat, scan_layers=bool(m.get("scan_layers", False)))
