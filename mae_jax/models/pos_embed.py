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


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
  """[gt*gh*gw, dim] table for spacetime patches, tokens in (t, h, w) order.

  As MAE-ST's fixed table: the first quarter of the channels is a 1-D sin-cos of
  the time index, the rest the 2-D spatial table above (``dim`` divisible by 16).
  """
  if dim % 16:
    raise ValueError(f"3-D sin-cos embedding needs dim divisible by 16, got {dim}")
  gt, gh, gw = grid
  temporal = sincos_1d(dim // 4, np.arange(gt, dtype=np.float64))
  spatial = sincos_2d(dim // 4 * 3, (gh, gw)).astype(np.float64)
  table = np.concatenate([np.repeat(temporal, gh * gw, axis=0),
                          np.tile(spatial, (gt, 1))], axis=1)
  return table.astype(np.float32)


def interleaved_sinusoid(num_positions: int, dim: int) -> np.ndarray:
  """[num_positions, dim] 1-D table with sin on even and cos on odd channels.

  The fixed table of Hugging Face VideoMAE (and the original Transformer):
  channel ``j`` uses the frequency ``1 / 10000 ** (2 * (j // 2) / dim)``.
  """
  angle = (np.arange(num_positions, dtype=np.float64)[:, None] /
           10000 ** (2 * (np.arange(dim) // 2) / dim)[None])
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


TABLES = ("sincos", "sinusoid_1d")


def fixed_table(kind: str, dim: int, grid: tuple[int, ...], cls_token: bool) -> np.ndarray:
  """The fixed table of a model: ``[(1 +) L, dim]`` (a zero cls row first).

  ``sincos``: the 2-D table for an image grid ``(gh, gw)``, the 3-D one for a clip
  grid ``(gt, gh, gw)``; ``sinusoid_1d``: VideoMAE's table over the flat token index.
  """
  if kind == "sinusoid_1d":
    table = interleaved_sinusoid(int(np.prod(grid)), dim)
  elif kind == "sincos":
    table = sincos_3d(dim, grid) if len(grid) == 3 else sincos_2d(dim, grid)
  else:
    raise ValueError(f"position table {kind!r} is unknown; choose one of {', '.join(TABLES)}")
  if cls_token:
    table = np.concatenate([np.zeros((1, dim), np.float32), table], axis=0)
  return table


def bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
  """``[out, in]`` weights of PyTorch's bicubic resize along one axis.

  ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``, no
  antialias: source coordinate ``(i + 0.5) * in / out - 0.5`` (not clamped), Keys
  cubic convolution with ``a = -0.75``, taps outside the input clamped to the edge.
  """
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  base = np.floor(src)
  t = src - base
  weights = np.zeros((out_size, in_size), np.float64)
  for k in range(-1, 3):
    x = np.abs(t - k)
    w = np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                 np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
    index = np.clip(base + k, 0, in_size - 1).astype(int)
    np.add.at(weights, (np.arange(out_size), index), w)
  return weights


def resize_table(table: np.ndarray, new_grid: tuple[int, int], num_prefix: int = 1,
                 old_grid: tuple[int, int] | None = None) -> np.ndarray:
  """Bicubic resize of a learned ``[prefix + gh*gw, D]`` table to another grid.

  Equal (to float32 precision) to the official fine-tuning code's
  ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``
  (``bicubic_matrix``); the prefix (cls) rows are kept. Fixed sin-cos tables are
  not resized but recomputed for the new grid (``sincos_2d``).
  """
  prefix, tokens = table[:num_prefix], table[num_prefix:]
  dim = table.shape[-1]
  if old_grid is None:
    side = int(round(tokens.shape[0] ** 0.5))
    old_grid = (side, side)
  if tuple(old_grid) == tuple(new_grid):
    return table
  grid = np.asarray(tokens, np.float64).reshape(old_grid[0], old_grid[1], dim)
  rows = bicubic_matrix(old_grid[0], new_grid[0])
  cols = bicubic_matrix(old_grid[1], new_grid[1])
  resized = np.einsum("oh,hwd,pw->opd", rows, grid, cols).reshape(-1, dim)
  return np.concatenate([prefix, resized.astype(table.dtype)], axis=0)
