"""Reconstruction grids: original | masked input | reconstruction | reconstruction
with the visible patches pasted back. ``mae-jax visualize`` writes one as PNG, of
dataset images or of the user's own files (``load_images``).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mae_jax.data.augment import denormalize
from mae_jax.models import masking


def unnormalize_prediction(images: np.ndarray, pred: np.ndarray, patch_size: int,
                           norm_pix_loss: bool, tubelet: int = 0,
                           per_channel: bool = False) -> np.ndarray:
  """Predicted patches back in the images' (normalised) pixel space.

  With ``norm_pix_loss`` the model predicts each patch normalised by its own
  statistics; the official visualisation re-applies the mean and (unbiased)
  variance of the true patch, which is what this does (per channel of the patch
  for a model trained with ``norm_pix_per_channel``).
  """
  if not norm_pix_loss:
    return pred
  target = np.asarray(masking.patchify_any(images, patch_size, tubelet))
  if per_channel:
    b, length, dim = target.shape
    channels = images.shape[-1]
    target = target.reshape(b, length, dim // channels, channels)
    mean = target.mean(-2, keepdims=True)
    std = target.std(-2, keepdims=True, ddof=1)
    return (pred.reshape(target.shape) * (std + 1e-6) + mean).reshape(b, length, dim)
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, keepdims=True, ddof=1)
  return pred * np.sqrt(var + 1e-6) + mean


def reconstruction_rows(images: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                        patch_size: int, norm_pix_loss: bool, mean, std, tubelet: int = 0,
                        per_channel: bool = False) -> np.ndarray:
  """[B, 4, H, W, C] in [0, 1]: original, masked, reconstruction, pasted.

  Clips ``[B, T, H, W, C]`` (``tubelet > 0``) give ``[B * 4, T, H, W, C]``: the four
  rows of each clip, a frame per column.
  """
  images = np.asarray(images, np.float32)
  pred = unnormalize_prediction(images, np.asarray(pred, np.float32), patch_size,
                                norm_pix_loss, tubelet, per_channel)
  if tubelet:
    grid = masking.clip_grid(images.shape[1:4], patch_size, tubelet)
  else:
    grid = masking.grid_size(images.shape[1:3], patch_size)
  channels = images.shape[-1]
  recon = np.asarray(masking.unpatchify_any(pred, patch_size, tubelet, grid, channels))
  pixel_mask = np.asarray(masking.unpatchify_any(
      np.repeat(np.asarray(mask, np.float32)[..., None], pred.shape[-1], -1),
      patch_size, tubelet, grid, channels))
  show = lambda x: denormalize(x, mean, std)
  masked = show(images) * (1 - pixel_mask) + 0.5 * pixel_mask
  pasted = show(images) * (1 - pixel_mask) + show(recon) * pixel_mask
  rows = np.stack([show(images), masked, show(recon), pasted], axis=1)
  return rows.reshape((-1,) + rows.shape[2:]) if tubelet else rows


def grid_image(rows: np.ndarray, scale: int = 1, pad: int = 2) -> np.ndarray:
  """[B, K, H, W, C] floats in [0, 1] -> one uint8 RGB image, a row per example."""
  b, k, h, w, c = rows.shape
  tiles = np.ones((b * (h + pad) + pad, k * (w + pad) + pad, 3), np.float32)
  for i in range(b):
    for j in range(k):
      tile = rows[i, j]
      tile = np.repeat(tile, 3, -1) if c == 1 else tile[..., :3]
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      tiles[y:y + h, x:x + w] = tile
  out = (tiles * 255).round().astype(np.uint8)
  if scale > 1:
    out = np.repeat(np.repeat(out, scale, 0), scale, 1)
  return out


def load_images(paths, size: int, channels: int) -> np.ndarray:
  """Image files (local or ``gs://``; JPEG, PNG, ...) as uint8 ``[N, size, size,
  channels]``: the shorter side resized to ``size`` (bicubic), then centre-cropped."""
  from mae_jax import fileio
  from mae_jax.data import augment, sources
  from mae_jax.errors import CorruptImageError, DataError
  out = []
  for path in paths:
    if not fileio.exists(path):
      raise DataError(f"--images: {path} does not exist.")
    try:
      image = sources.read_image(path, channels)
    except CorruptImageError as e:
      raise DataError(f"--images: {e.what} is not an image that can be decoded.") from None
    out.append(augment.center_crop(image, size, crop_pct=1.0))
  return np.stack(out)


def save_png(image: np.ndarray | Image.Image, path: str) -> None:
  """Writes a uint8 [H, W, C] array or a PIL image as PNG (local or ``gs://``)."""
  from mae_jax import fileio
  buffer = io.BytesIO()
  (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer,
                                                                            format="PNG")
  fileio.write_bytes(path, buffer.getvalue())


def default_scale(height: int) -> int:
  return max(1, 112 // height)
