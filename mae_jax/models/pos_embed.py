"""Fixed 2-D sin-cos position tables in the official MAE layout, and resizing.

Layout (as the official ``get_2d_sincos_pos_embed``): the first half of the
channels encodes the w (column) coordinate, the second half the h (row)
coordinate; each half is ``[sin(pos * omega), cos(pos * omega)]`` with
``omega_k = 1 / 10000 ** (k / (D/4))``; an optional leading zero row for cls.
Tables are constants (computed in float64, stored as float32), never parameters.
"""
from __future__ import annotations

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  if dim % 2:
    raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000 ** omega
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int] | int, cls_token: bool = False) -> np.ndarray:
  """[(1 +) gh*gw, dim] float32 table."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
  gh, gw = (grid, grid) if isinstance(grid, int) else grid
  ww, hh = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
  table = np.concatenate([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], axis=1)
  if cls_token:
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
  return table.astype(np.float32)


def resize_table(table: np.ndarray, new_grid: tuple[int, int], num_prefix: int = 1,
                 old_grid: tuple[int, int] | None = None) -> np.ndarray:
  """Bicubic resize of a [prefix + gh*gw, D] table to another grid.

  Used for *learned* or imported tables (as the official fine-tuning code does
  with ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)``).
  """
  import jax  # local: keep this module importable without touching devices
  import jax.numpy as jnp
  prefix, tokens = table[:num_prefix], table[num_prefix:]
  dim = table.shape[-1]
  if old_grid is None:
    side = int(round(tokens.shape[0] ** 0.5))
    old_grid = (side, side)
  if tuple(old_grid) == tuple(new_grid):
    return table
  grid = tokens.reshape(old_grid[0], old_grid[1], dim)
  resized = jax.image.resize(jnp.asarray(grid, jnp.float32), (*new_grid, dim), "bicubic",
                             antialias=False)
  return np.concatenate([prefix, np.asarray(resized).reshape(-1, dim)], axis=0)
