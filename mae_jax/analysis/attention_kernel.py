"""Claim 1: patch attention is a (learned) integral kernel over the patch domain.

Softmax attention computes ``out(x_q) = sum_k w(x_q, x_k) v(x_k)``, a discretised
integral operator whose kernel ``w`` depends on the tokens' content *and*
position. Here we measure the position part: the weight as a function of the
2-D displacement between query and key patch, and how local the kernel is.

All functions are pure NumPy over attention weights ``[B, H, Nq, Nk]`` and the
patch index of every query/key token (``-1`` = cls, excluded):

* ``displacement_kernel``: per head, the mean weight over all (query, key) pairs
  with displacement ``(dy, dx) = key - query`` (in patches), as an image of size
  ``(2 gh - 1) x (2 gw - 1)`` with ``(0, 0)`` at the centre; NaN where no pair has
  that displacement. ``counts`` says how many pairs each pixel averages. Weights
  are not renormalised after dropping cls: uniform attention over ``N`` tokens
  gives ``1 / N`` everywhere, identity attention gives 1 at the centre, 0 elsewhere.
* ``kernel_r2``: share of the variance of the weights (over patch pairs) that the
  displacement kernel explains; 1 = attention is a pure translation-invariant
  (convolution-like) kernel, 0 = position tells nothing.
* ``attention_stats``: per head, mean attention distance in pixels (the ViT
  paper's metric: ``sum_k w_qk * |c_q - c_k|`` over patch keys, weights
  renormalised to sum to 1 over patch keys, averaged over queries; ``c`` = patch
  centres), entropy of the full attention row (nats, cls included; uniform over
  ``N`` tokens = ``log N``) and the mean weight on cls.
"""
from __future__ import annotations

import numpy as np

from mae_jax.analysis.hooks import patch_coords


def _pairs(q_pos, k_pos, grid, q_select=None, k_select=None):
  """Displacement index ``[B, Nq, Nk]`` and the boolean pair mask."""
  q_pos, k_pos = np.asarray(q_pos), np.asarray(k_pos)
  gh, gw = grid
  qr, qc = patch_coords(q_pos, grid)
  kr, kc = patch_coords(k_pos, grid)
  dy = kr[:, None, :] - qr[:, :, None]
  dx = kc[:, None, :] - qc[:, :, None]
  index = (dy + gh - 1) * (2 * gw - 1) + (dx + gw - 1)
  valid_q = q_pos >= 0
  valid_k = k_pos >= 0
  if q_select is not None:
    valid_q = valid_q & np.asarray(q_select, bool)
  if k_select is not None:
    valid_k = valid_k & np.asarray(k_select, bool)
  pair = valid_q[:, :, None] & valid_k[:, None, :]
  return index, pair, dy, dx


def displacement_kernel(weights, q_pos, k_pos, grid, q_select=None):
  """``(kernel [H, 2gh-1, 2gw-1], counts [2gh-1, 2gw-1])``; see the module docstring."""
  weights = np.asarray(weights)
  gh, gw = grid
  size = (2 * gh - 1) * (2 * gw - 1)
  index, pair, _, _ = _pairs(q_pos, k_pos, grid, q_select)
  flat = index[pair]
  counts = np.bincount(flat, minlength=size).astype(np.float64)
  kernel = np.empty((weights.shape[1], size))
  with np.errstate(invalid="ignore", divide="ignore"):
    for h in range(weights.shape[1]):
      sums = np.bincount(flat, weights=weights[:, h][pair].astype(np.float64),
                         minlength=size)
      kernel[h] = np.where(counts > 0, sums / counts, np.nan)
  shape = (2 * gh - 1, 2 * gw - 1)
  return kernel.reshape(-1, *shape), counts.reshape(shape)


def kernel_r2(weights, q_pos, k_pos, grid, kernel=None, q_select=None) -> np.ndarray:
  """Per head: 1 - Var(w - kernel(displacement)) / Var(w) over the patch pairs."""
  weights = np.asarray(weights)
  if kernel is None:
    kernel, _ = displacement_kernel(weights, q_pos, k_pos, grid, q_select)
  index, pair, _, _ = _pairs(q_pos, k_pos, grid, q_select)
  flat = index[pair]
  out = np.empty(weights.shape[1])
  for h in range(weights.shape[1]):
    w = weights[:, h][pair].astype(np.float64)
    fit = kernel[h].reshape(-1)[flat]
    var = w.var()
    # constant weights (e.g. uniform attention): nothing to explain
    flat_weights = var <= 1e-12 * max(float(np.mean(w ** 2)), 1e-300)
    out[h] = np.nan if flat_weights else 1.0 - ((w - fit) ** 2).mean() / var
  return out


def attention_stats(weights, q_pos, k_pos, grid, patch_size: int, q_select=None) -> dict:
  """Per head ``mean_distance`` (pixels), ``entropy`` (nats), ``cls_share``; each ``[H]``."""
  weights = np.asarray(weights)
  _, pair, dy, dx = _pairs(q_pos, k_pos, grid, q_select)
  sel = pair.any(axis=2)                                   # [B, Nq] queries that count
  n = max(int(sel.sum()), 1)
  key_patch = (np.asarray(k_pos) >= 0)[:, None, :]         # [B, 1, Nk]
  distance = patch_size * np.sqrt(dy.astype(np.float64) ** 2 + dx ** 2)  # [B, Nq, Nk]
  out = {k: np.zeros(weights.shape[1]) for k in ("mean_distance", "entropy", "cls_share")}
  for h in range(weights.shape[1]):                        # per head: O(B N^2) memory
    w = weights[:, h].astype(np.float64)                   # [B, Nq, Nk]
    patch_mass = np.where(key_patch, w, 0.0).sum(-1)
    weighted = np.where(key_patch, w * distance, 0.0).sum(-1)
    row_distance = np.divide(weighted, patch_mass, out=np.zeros_like(weighted),
                             where=patch_mass > 0)
    logw = np.log(w, out=np.zeros_like(w), where=w > 0)
    row_entropy = -(w * logw).sum(-1)
    cls_mass = np.where(key_patch, 0.0, w).sum(-1)
    out["mean_distance"][h] = row_distance[sel].sum() / n
    out["entropy"][h] = row_entropy[sel].sum() / n
    out["cls_share"][h] = cls_mass[sel].sum() / n
  return out


def key_share(weights, q_pos, k_pos, k_select, q_select=None) -> np.ndarray:
  """Per head: mean over queries of the attention mass on the keys in ``k_select``."""
  weights = np.asarray(weights)
  q_ok = np.asarray(q_pos) >= 0
  if q_select is not None:
    q_ok = q_ok & np.asarray(q_select, bool)
  k_sel = np.asarray(k_select, bool)[:, None, None, :]
  mass = np.where(k_sel, weights, 0.0).sum(-1, dtype=np.float64)   # [B, H, Nq]
  sel = q_ok[:, None, :]
  return np.where(sel, mass, 0.0).sum(axis=(0, 2)) / np.maximum(sel.sum(axis=(0, 2)), 1)


def uniform_weights(shape) -> np.ndarray:
  """Uniform attention ``[B, H, N, N]`` (each row ``1 / N``): the no-preference reference."""
  return np.full(shape, 1.0 / shape[-1])


def _layer_summary(weights, q_pos, k_pos, grid, patch_size, q_select=None,
                   with_kernel=True) -> dict:
  out = attention_stats(weights, q_pos, k_pos, grid, patch_size, q_select)
  if with_kernel:
    kernel, counts = displacement_kernel(weights, q_pos, k_pos, grid, q_select)
    out["kernel"] = kernel
    out["kernel_counts"] = counts
    out["kernel_r2"] = kernel_r2(weights, q_pos, k_pos, grid, kernel, q_select)
  uniform = attention_stats(uniform_weights(weights.shape[:1] + (1,) + weights.shape[2:]),
                            q_pos, k_pos, grid, patch_size, q_select)
  out["uniform_mean_distance"] = float(uniform["mean_distance"][0])
  out["uniform_entropy"] = float(uniform["entropy"][0])
  return out


def analyze(trace) -> dict:
  """Per encoder/decoder layer and head: kernels, distances, entropies (see above).

  Decoder layers are also split by query type: ``mask_queries`` (mask tokens)
  and ``visible_queries``; ``mask_to_visible_share`` is the attention mass mask
  tokens put on visible tokens (uniform reference: ``visible_fraction``).
  """
  grid, p = trace.grid, trace.patch_size
  encoder = []
  for l, w in enumerate(trace.encoder_attn):
    pos = trace.encoder_positions
    encoder.append(dict(layer=l, **_layer_summary(w, pos, pos, grid, p)))
  decoder = []
  pos = trace.decoder_positions
  b = pos.shape[0]
  token_mask = np.concatenate([np.zeros((b, 1)), trace.mask], axis=1) > 0.5   # cls: not masked
  token_visible = np.concatenate([np.zeros((b, 1)), 1 - trace.mask], axis=1) > 0.5
  for l, w in enumerate(trace.decoder_attn):
    entry = dict(layer=l, **_layer_summary(w, pos, pos, grid, p))
    entry["mask_queries"] = _layer_summary(w, pos, pos, grid, p, q_select=token_mask)
    entry["visible_queries"] = _layer_summary(w, pos, pos, grid, p, q_select=token_visible)
    entry["mask_to_visible_share"] = key_share(w, pos, pos, token_visible, q_select=token_mask)
    entry["visible_fraction"] = float(token_visible.sum() / token_visible.size)
    decoder.append(entry)
  return {"encoder": encoder, "decoder": decoder, "grid": list(grid), "patch_size": p}
