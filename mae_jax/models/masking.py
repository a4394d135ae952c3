"""Patch layout and per-sample random masking: the one place that defines both.

Pixel order inside a patch is (row, col, channel), as in the official MAE code, so
``pred`` and the exported ``decoder_pred`` weights mean the same in JAX and PyTorch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mae_jax.errors import ConfigError


def grid_size(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
  """Patches per side; a clear error when the image does not tile exactly."""
  height, width = image_size
  if patch_size <= 0:
    raise ConfigError(f"patch_size must be positive, got {patch_size}.")
  if height % patch_size or width % patch_size:
    raise ConfigError(
        f"image size {height}x{width} is not divisible by patch_size {patch_size}; "
        "choose data.image_size as a multiple of model.patch_size "
        f"(e.g. {max(patch_size, height // patch_size * patch_size)}).")
  return height // patch_size, width // patch_size


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, L, p*p*C] with patches in row-major order."""
  b, h, w, c = images.shape
  gh, gw = grid_size((h, w), patch_size)
  p = patch_size
  x = images.reshape(b, gh, p, gw, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches: jax.Array, patch_size: int,
               grid: tuple[int, int] | None = None,
               channels: int | None = None) -> jax.Array:
  """[B, L, p*p*C] -> [B, H, W, C]; a square grid unless ``grid`` is given."""
  b, length, dim = patches.shape
  p = patch_size
  if channels is None:
    channels = dim // (p * p)
  if p * p * channels != dim:
    raise ValueError(f"patch dim {dim} is not patch_size^2 * channels = {p}^2 * {channels}")
  if grid is None:
    side = int(round(length ** 0.5))
    if side * side != length:
      raise ValueError(f"{length} patches do not form a square grid; pass grid=(gh, gw)")
    grid = (side, side)
  gh, gw = grid
  x = patches.reshape(b, gh, gw, p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, channels)


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Patches kept by the encoder: ``int(L * (1 - mask_ratio))`` as the official code."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ConfigError(
        f"model.mask_ratio must be in [0, 1), got {mask_ratio}; MAE uses 0.75.")
  keep = int(num_patches * (1 - mask_ratio))
  if keep < 1:
    raise ConfigError(
        f"model.mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}; "
        f"use a ratio below {1 - 1 / num_patches:.4f}.")
  return keep


def random_masking(x: jax.Array, mask_ratio: float, *, rng: jax.Array | None = None,
                   noise: jax.Array | None = None, keep: int | None = None):
  """Keeps a random subset of tokens per sample.

  Patches are ranked by ``noise`` ([B, L], uniform in [0, 1) when drawn from
  ``rng``) ascending; the first ``int(L * (1 - mask_ratio))`` are kept. This is
  exactly the official ranking of ``torch.rand`` noise, so an explicit ``noise``
  reproduces a PyTorch run. ``keep`` overrides the count (tube masking keeps whole tubes).

  Returns ``(x_visible [B, K, D], mask [B, L] with 1 = removed, ids_restore [B, L])``.
  """
  b, length, dim = x.shape
  if keep is None:
    keep = num_visible(length, mask_ratio)
  if noise is None:
    if rng is None:
      raise ValueError("random_masking needs either rng or noise")
    noise = jax.random.uniform(rng, (b, length))
  elif noise.shape != (b, length):
    raise ValueError(f"noise must have shape {(b, length)}, got {noise.shape}")
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :keep]
  x_visible = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  mask = (ids_restore >= keep).astype(jnp.float32)
  return x_visible, mask, ids_restore


# ----------------------------------------------------------------------------- clips
def clip_grid(clip_shape: tuple[int, int, int], patch_size: int,
              tubelet: int) -> tuple[int, int, int]:
  """Spacetime patches per axis of ``T x H x W`` clips; a clear error when they do not tile."""
  frames = clip_shape[0]
  if tubelet <= 0 or frames % tubelet:
    raise ConfigError(f"{frames} frames are not divisible by model.tubelet_size={tubelet}; "
                      "choose data.video.num_frames as a multiple of it.")
  return (frames // tubelet,) + grid_size(clip_shape[1:], patch_size)


def patchify_clips(clips: jax.Array, patch_size: int, tubelet: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, gt*gh*gw, t*p*p*C]; tokens in (time, row, col) order.

  Pixels inside a patch are in (frame, row, col, channel) order, as VideoMAE's
  targets; with ``tubelet=1`` and one frame this is ``patchify``.
  """
  b, t, h, w, c = clips.shape
  gt, gh, gw = clip_grid((t, h, w), patch_size, tubelet)
  p = patch_size
  x = clips.reshape(b, gt, tubelet, gh, p, gw, p, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, gt * gh * gw, tubelet * p * p * c)


def unpatchify_clips(patches: jax.Array, patch_size: int, tubelet: int,
                     grid: tuple[int, int, int], channels: int) -> jax.Array:
  """Inverse of ``patchify_clips``: [B, gt*gh*gw, t*p*p*C] -> [B, T, H, W, C]."""
  b = patches.shape[0]
  gt, gh, gw = grid
  p = patch_size
  x = patches.reshape(b, gt, gh, gw, tubelet, p, p, channels)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, gt * tubelet, gh * p, gw * p, channels)


def patchify_any(images: jax.Array, patch_size: int, tubelet: int = 0) -> jax.Array:
  """Images ``[B, H, W, C]`` (``tubelet=0``) or clips ``[B, T, H, W, C]`` to patches."""
  if tubelet:
    return patchify_clips(images, patch_size, tubelet)
  return patchify(images, patch_size)


def unpatchify_any(patches: jax.Array, patch_size: int, tubelet: int,
                   grid: tuple[int, ...], channels: int) -> jax.Array:
  """Inverse of ``patchify_any`` for a grid ``(gh, gw)`` or ``(gt, gh, gw)``."""
  if tubelet:
    return unpatchify_clips(patches, patch_size, tubelet, grid, channels)
  return unpatchify(patches, patch_size, grid, channels)


def tube_noise(rng: jax.Array, batch: int, grid: tuple[int, int, int]) -> jax.Array:
  """Ranking noise [B, gt*gh*gw] equal on every time step: the same spatial mask per frame.

  ``random_masking`` sorts stably, so with ``tube_visible`` patches kept the kept set
  is whole tubes: the ``gh*gw - int(ratio * gh*gw)`` lowest spatial positions on
  every frame (VideoMAE's tube masking rounds the masked count per frame down).
  """
  gt, gh, gw = grid
  spatial = jax.random.uniform(rng, (batch, 1, gh * gw))
  return jnp.broadcast_to(spatial, (batch, gt, gh * gw)).reshape(batch, gt * gh * gw)


def tube_visible(grid: tuple[int, int, int], mask_ratio: float) -> int:
  """Patches kept by tube masking: whole tubes, ``gt * (S - int(ratio * S))``."""
  gt, gh, gw = grid
  per_frame = gh * gw - int(mask_ratio * gh * gw)
  if not 0.0 <= mask_ratio < 1.0 or per_frame < 1:
    raise ConfigError(f"model.mask_ratio={mask_ratio} leaves no visible tube out of "
                      f"{gh * gw} per frame; VideoMAE uses 0.9.")
  return gt * per_frame
