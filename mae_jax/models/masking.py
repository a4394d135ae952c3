"""Patch layout and per-sample masking: the one place that defines both.

Pixel order inside a patch is (row, col, channel), as in the official MAE code, so
``pred`` and the exported ``decoder_pred`` weights mean the same in JAX and PyTorch.

Masking strategies (``model.masking``; the MAE paper's Fig. 6 and Table 1(f)). Every
strategy draws a ranking ``noise`` ``[B, L]`` per sample inside the jitted step; the
patches are then ranked by it exactly as the official code ranks ``torch.rand`` noise
(argsort ascending, the first ``int(L * (1 - mask_ratio))`` kept; ``tube_visible`` for
tubes), so the encoder always sees the same number of tokens and one code path serves
all strategies:

* ``random``: uniform noise, the official per-sample random sampling.
* ``block``: BEiT's block-wise masking. Rectangles of random target area (from
  ``BLOCK_MIN_PATCHES`` -- fewer on grids too small for it, or when fewer patches
  remain to mask -- up to the patches still to mask), aspect ratio log-uniform in
  [0.3, 1/0.3] and each side shorter than the grid's are added at random places
  until the target count ``L - int(L * (1 - mask_ratio))`` is reached or 10 draws in
  a row add nothing, as BEiT's ``MaskingGenerator`` does (BEiT's smallest block is 16
  patches of a 14x14 grid; 4 here suits the small grids of the Fashion-MNIST demo).
  A block is only accepted when it adds at most the patches still to mask, so blocks
  never overshoot; when they fall short, the count is filled up with patches outside
  the blocks in random order (noise: block patches ``1 + u``, the others ``u``, ``u``
  uniform), so exactly ``int(L * (1 - mask_ratio))`` stay visible.
* ``grid``: keeps one patch of every 2x2 cell (ratio 0.75 only, an even number of
  patches per side). The paper keeps one of every four in a regular pattern; here
  the kept position inside the cell, one of four, is drawn per sample and shared by
  all cells of that image, so every position is predicted in training.
* ``tube`` (video models, ``model.tubelet_size > 0``): the same spatial ranking on
  every time step, so whole tubes are kept (``tube_noise``, ``tube_visible``).

An explicit ``noise`` replaces the draw whatever the strategy: it is the ranking.
``sample_noise`` gives block-, grid- or tube-shaped noise to pass in.
"""
from __future__ import annotations

import math

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


STRATEGIES = ("random", "block", "grid", "tube")
IMAGE_STRATEGIES = ("block", "grid")
GRID_MASK_RATIO = 0.75           # one of every 2x2 kept
BLOCK_MIN_PATCHES = 4            # smallest block (BEiT uses 16 on its 14x14 grid)
BLOCK_MIN_ASPECT = 0.3           # aspect ratios log-uniform in [0.3, 1 / 0.3]
BLOCK_MAX_FAILURES = 10          # draws in a row that add nothing end the blocks


def check_strategy(strategy: str, mask_ratio: float, grid: tuple[int, int]) -> None:
  """A ``ConfigError`` naming the fix when ``strategy`` cannot mask ``grid`` at the ratio."""
  if strategy not in STRATEGIES:
    raise ConfigError(f"model.masking={strategy!r} is unknown; choose one of "
                      f"{', '.join(STRATEGIES)}.")
  num_visible(math.prod(grid), mask_ratio)
  if strategy == "tube":
    if len(grid) != 3:
      raise ConfigError("model.masking=tube needs a video model (model.tubelet_size > 0).")
    tube_visible(grid, mask_ratio)
  elif strategy in IMAGE_STRATEGIES and len(grid) != 2:
    raise ConfigError(f"model.masking={strategy!r} masks images; a video model "
                      "(model.tubelet_size > 0) uses 'random' or 'tube'.")
  if strategy == "grid":
    if mask_ratio != GRID_MASK_RATIO:
      raise ConfigError(
          f"model.masking='grid' keeps one patch of every 2x2, a mask ratio of 0.75, but "
          f"model.mask_ratio={mask_ratio}; set model.mask_ratio=0.75 or use 'random' or "
          "'block' masking.")
    if grid[0] % 2 or grid[1] % 2:
      raise ConfigError(
          f"model.masking='grid' needs an even number of patches per side, the images "
          f"give {grid[0]}x{grid[1]}; change data.image_size or model.patch_size (e.g. "
          "28x28 images with patch 7 or 14), or use 'random' or 'block' masking.")


def block_min_patches(grid: tuple[int, int]) -> int:
  """``BLOCK_MIN_PATCHES``, or the largest block that fits when the grid is smaller."""
  return max(1, min(BLOCK_MIN_PATCHES, (grid[0] - 1) * (grid[1] - 1)))


def block_proposals(u: jax.Array, remaining: jax.Array, grid: tuple[int, int]):
  """BEiT block proposals ``(top, left, h, w)`` from uniforms ``u`` ``[..., 4]``.

  ``remaining`` ``[...]``: patches still to mask. Area ``a = m + (r - m) * u0`` with
  ``m = block_min_patches(grid)`` and ``r = remaining`` (Python's
  ``random.uniform(m, r)``, so also when ``r < m``); aspect ``e = exp(log(1/0.3) *
  (2 * u1 - 1))``, log-uniform in [0.3, 1/0.3]; ``h = round(sqrt(a * e))``,
  ``w = round(sqrt(a / e))`` (at least 1); ``top = floor(u2 * (gh - h + 1))`` and
  ``left = floor(u3 * (gw - w + 1))``, uniform over the places where the block fits
  (0 when it does not).
  """
  gh, gw = grid
  lo = float(block_min_patches(grid))
  area = lo + (remaining - lo) * u[..., 0]
  aspect = jnp.exp(-math.log(BLOCK_MIN_ASPECT) * (2 * u[..., 1] - 1))
  h = jnp.maximum(jnp.round(jnp.sqrt(area * aspect)), 1).astype(jnp.int32)
  w = jnp.maximum(jnp.round(jnp.sqrt(area / aspect)), 1).astype(jnp.int32)
  place = lambda v, n: jnp.clip(jnp.floor(v * n), 0, n - 1).astype(jnp.int32)
  top = place(u[..., 2], jnp.maximum(gh - h + 1, 1))
  left = place(u[..., 3], jnp.maximum(gw - w + 1, 1))
  return top, left, h, w


def block_masks(rng: jax.Array, batch: int, grid: tuple[int, int],
                num_masked: int) -> jax.Array:
  """BEiT blocks per sample: ``[B, gh, gw]`` bool, True = in a block (<= ``num_masked``).

  Draw ``i`` of sample ``b`` is ``block_proposals`` of
  ``uniform(fold_in(rng, i), (B, 4))[b]``; a block with ``h < gh`` and ``w < gw`` adding
  between 1 and the remaining count of new patches is accepted. A sample stops at
  ``num_masked`` or after ``BLOCK_MAX_FAILURES`` rejected draws in a row.
  """
  gh, gw = grid
  rows = jnp.arange(gh)[None, :, None]
  cols = jnp.arange(gw)[None, None, :]
  active = lambda count, failures: (count < num_masked) & (failures < BLOCK_MAX_FAILURES)

  def cond(carry):
    _, count, failures, _ = carry
    return jnp.any(active(count, failures))

  def body(carry):
    mask, count, failures, attempt = carry
    remaining = num_masked - count
    u = jax.random.uniform(jax.random.fold_in(rng, attempt), (batch, 4))
    top, left, h, w = (v[:, None, None] for v in block_proposals(u, remaining, grid))
    block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    added = jnp.sum(block & ~mask, axis=(1, 2), dtype=jnp.int32)
    accept = (active(count, failures) & (h[:, 0, 0] < gh) & (w[:, 0, 0] < gw) &
              (added > 0) & (added <= remaining))
    return (mask | (block & accept[:, None, None]), count + jnp.where(accept, added, 0),
            jnp.where(accept, 0, failures + 1), attempt + 1)

  zeros = jnp.zeros((batch,), jnp.int32)
  init = (jnp.zeros((batch, gh, gw), bool), zeros, zeros, jnp.int32(0))
  return jax.lax.while_loop(cond, body, init)[0]


def grid_kept(rng: jax.Array, batch: int, grid: tuple[int, int]) -> jax.Array:
  """``[B, gh, gw]`` bool, True = kept: one patch of every 2x2, a random offset per sample."""
  gh, gw = grid
  offset = jax.random.randint(rng, (batch, 2, 1, 1), 0, 2)
  return ((jnp.arange(gh)[None, :, None] % 2 == offset[:, 0]) &
          (jnp.arange(gw)[None, None, :] % 2 == offset[:, 1]))


def visible_count(strategy: str, grid: tuple[int, ...], mask_ratio: float) -> int:
  """Patches the encoder keeps: ``int(L * (1 - mask_ratio))``, or whole tubes."""
  if strategy == "tube":
    return tube_visible(grid, mask_ratio)
  return num_visible(math.prod(grid), mask_ratio)


def sample_noise(rng: jax.Array, strategy: str, batch: int, grid: tuple[int, ...],
                 mask_ratio: float) -> jax.Array:
  """``[B, L]`` ranking noise of ``strategy``: argsort keeps the first ``visible_count``."""
  check_strategy(strategy, mask_ratio, grid)
  length = math.prod(grid)
  if strategy == "random":
    return jax.random.uniform(rng, (batch, length))
  if strategy == "tube":
    return tube_noise(rng, batch, grid)
  k_shape, k_order = jax.random.split(rng)
  if strategy == "block":
    num_masked = length - num_visible(length, mask_ratio)
    masked = block_masks(k_shape, batch, grid, num_masked)
  else:
    masked = ~grid_kept(k_shape, batch, grid)
  order = jax.random.uniform(k_order, (batch, length))
  return order + masked.reshape(batch, length).astype(order.dtype)


def random_masking(x: jax.Array, mask_ratio: float, *, rng: jax.Array | None = None,
                   noise: jax.Array | None = None, strategy: str = "random",
                   grid: tuple[int, ...] | None = None):
  """Keeps a subset of tokens per sample, drawn by ``strategy`` (see the module doc).

  Patches are ranked by ``noise`` ([B, L]; drawn from ``rng`` by ``sample_noise``
  when not given) ascending; the first ``int(L * (1 - mask_ratio))`` are kept (whole
  tubes for ``tube``). This is exactly the official ranking of ``torch.rand`` noise,
  so an explicit ``noise`` reproduces a PyTorch run. ``grid`` (patches per axis,
  product ``L``) is needed by every strategy but ``random``.

  Returns ``(x_visible [B, K, D], mask [B, L] with 1 = removed, ids_restore [B, L])``.
  """
  b, length, dim = x.shape
  if grid is None and strategy == "random":
    grid = (1, length)
  if grid is None or math.prod(grid) != length:
    raise ValueError(f"{strategy} masking of {length} tokens needs a grid of patches per "
                     f"axis whose product is {length}, got {grid}")
  keep = visible_count(strategy, grid, mask_ratio)
  if noise is None:
    if rng is None:
      raise ValueError("random_masking needs either rng or noise")
    noise = sample_noise(rng, strategy, b, grid, mask_ratio)
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
