"""Encoded image bytes -> uint8 arrays: what the image sources (``mae_jax.data.sources``)
and the clip sources (``mae_jax.data.video``: one encoded image per frame) share.
JPEGs a crop decodes lazily are ``mae_jax.data.jpeg``'s.
"""
from __future__ import annotations

import io

import numpy as np

from mae_jax.errors import ConfigError


def image_mode(channels: int) -> str:
  """The PIL mode of ``channels``-channel images (``L`` or ``RGB``)."""
  if channels not in (1, 3):
    raise ConfigError(f"data.channels must be 1 or 3, got {channels}.")
  return "L" if channels == 1 else "RGB"


def decode_image(data: bytes, channels: int, where: str) -> np.ndarray:
  """Encoded image bytes (any format PIL reads) as uint8 ``[H, W, channels]``;
  ``CorruptImageError`` naming ``where`` if they cannot be decoded."""
  from PIL import Image
  from mae_jax.data import jpeg
  mode = image_mode(channels)
  try:
    image = Image.open(io.BytesIO(data))
    image = image if image.mode == mode else image.convert(mode)
    out = np.asarray(image)
  except jpeg.DECODE_ERRORS as e:
    raise jpeg.corrupt(where, e) from None
  return out[..., None] if out.ndim == 2 else out
