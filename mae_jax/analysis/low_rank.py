"""Claim 3: image patches are low rank, so masked patches are predictable from few.

Everything is in the model's input space (normalised pixels), on the patch
matrix of an image: ``P = patchify(image)``, ``L x (p*p*C)``, one row per patch.

* ``singular_values``: per image, the ``min(L, p*p*C)`` singular values of ``P``;
  ``pooled_singular_values``: of all images' patches stacked (``B*L x p*p*C``).
* ``energy_topk(s, k)``: ``sum_{i<k} s_i^2 / sum_i s_i^2``.
* ``effective_rank(s)``: Roy & Vetterli (2007), ``exp(H(s / sum s))`` with ``H``
  the Shannon entropy (nats); ``r`` equal non-zero singular values give ``r``.
* The null reference shuffles the pixels of every image (same values, no spatial
  structure) and measures the same statistics.

Completion (a well-defined linear counterpart of what MAE's decoder does): for a
FIXED mask pattern (visible patch set ``V``, masked set ``M``), fit on training
images the best affine map from the visible pixels ``x_V`` to the masked pixels
``x_M`` whose linear part has rank ``<= k`` (reduced-rank regression: the
least-squares solution ``B`` with a tiny ridge, projected on the top-``k`` right
singular vectors of the fitted values ``X_V B``; rank 0 predicts the training
mean of ``x_M``), then report the mean squared error per masked pixel on held-out
images. ``completion_curve`` averages over ``num_patterns`` random patterns per
mask ratio. If the data are exactly rank ``r`` (image vectors in an
``r``-dimensional subspace) and ``|V| p^2 C >= r``, rank ``r`` completes exactly.
"""
from __future__ import annotations

import numpy as np

from mae_jax.models import masking


def patch_matrices(images, patch_size: int) -> np.ndarray:
  """``[B, L, p*p*C]`` float64 patch matrices (row-major patches)."""
  images = np.asarray(images, np.float64)
  b, h, w, c = images.shape
  gh, gw = masking.grid_size((h, w), patch_size)
  x = images.reshape(b, gh, patch_size, gw, patch_size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, patch_size * patch_size * c)


def singular_values(patches) -> np.ndarray:
  """``[B, min(L, d)]`` singular values, descending."""
  return np.linalg.svd(np.asarray(patches, np.float64), compute_uv=False)


def pooled_singular_values(patches) -> np.ndarray:
  """Singular values of all patch rows stacked, via the ``d x d`` Gram matrix."""
  rows = np.asarray(patches, np.float64).reshape(-1, patches.shape[-1])
  eig = np.linalg.eigvalsh(rows.T @ rows)[::-1]
  return np.sqrt(np.clip(eig, 0.0, None))


def energy_topk(s, k: int) -> np.ndarray:
  s = np.asarray(s, np.float64)
  e = s ** 2
  total = e.sum(-1)
  return np.where(total > 0, e[..., :k].sum(-1) / np.where(total > 0, total, 1.0), 0.0)


def effective_rank(s) -> np.ndarray:
  s = np.asarray(s, np.float64)
  total = s.sum(-1, keepdims=True)
  p = np.where(total > 0, s / np.where(total > 0, total, 1.0), 0.0)
  logp = np.log(p, out=np.zeros_like(p), where=p > 0)
  return np.exp(-(p * logp).sum(-1))


def numerical_rank(s, rtol: float = 1e-6) -> np.ndarray:
  s = np.asarray(s, np.float64)
  return (s > rtol * s[..., :1]).sum(-1)


def shuffle_pixels(images, seed: int = 0) -> np.ndarray:
  """Every image's pixels permuted independently: the no-structure null."""
  images = np.asarray(images)
  b = images.shape[0]
  flat = images.reshape(b, -1)
  rng = np.random.default_rng(seed)
  order = np.argsort(rng.random(flat.shape), axis=1)
  return np.take_along_axis(flat, order, axis=1).reshape(images.shape)


def spectrum_stats(images, patch_size: int, ks=(1, 2, 4, 8)) -> dict:
  """Per-image and pooled spectra with energy, effective and numerical rank."""
  patches = patch_matrices(images, patch_size)
  s = singular_values(patches)
  pooled = pooled_singular_values(patches)
  ks = [k for k in ks if k <= s.shape[-1]]
  return {
      "shape": list(patches.shape[1:]),
      "mean_singular_values": s.mean(0),
      "pooled_singular_values": pooled,
      "effective_rank": float(effective_rank(s).mean()),
      "effective_rank_pooled": float(effective_rank(pooled)),
      "numerical_rank": float(numerical_rank(s).mean()),
      "energy_topk": {str(k): float(energy_topk(s, k).mean()) for k in ks},
      "energy_topk_pooled": {str(k): float(energy_topk(pooled, k)) for k in ks},
  }


# ------------------------------------------------------------------- completion


def fixed_pattern(num_patches: int, mask_ratio: float, rng: np.random.Generator):
  """``(visible, masked)`` sorted patch indices, as MAE ranks one noise vector."""
  keep = masking.num_visible(num_patches, mask_ratio)
  order = np.argsort(rng.random(num_patches))
  return np.sort(order[:keep]), np.sort(order[keep:])


def pixel_moments(train_patches) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[L*d]`` and centred Gram matrix ``[L*d, L*d]`` of the training images.

  Every fixed-pattern regression needs only sub-blocks of these, so the training
  images are read once whatever the number of patterns.
  """
  x = np.asarray(train_patches, np.float64)
  x = x.reshape(len(x), -1)
  mean = x.mean(0)
  xc = x - mean
  return mean, xc.T @ xc


def _pixel_index(patch_index, d: int) -> np.ndarray:
  return (np.asarray(patch_index)[:, None] * d + np.arange(d)[None]).reshape(-1)


def completion_from_moments(mean, gram, test_patches, visible, masked, ranks,
                            ridge: float = 1e-8) -> dict:
  """Held-out MSE per masked pixel of the rank-``k`` affine completion, per ``k``.

  ``mean``/``gram`` from ``pixel_moments`` of the training patches; ``test_patches``
  ``[N, L, d]``. Ranks above ``min(|V| d, |M| d)`` are clipped to it.
  """
  te = np.asarray(test_patches, np.float64)
  d = te.shape[-1]
  iv, im = _pixel_index(visible, d), _pixel_index(masked, d)
  g_vv = gram[np.ix_(iv, iv)]
  lam = ridge * max(np.trace(g_vv) / len(iv), 1e-30)
  g_vv = g_vv + lam * np.eye(len(iv))
  coef = np.linalg.solve(g_vv, gram[np.ix_(iv, im)])                     # [p, q]
  # The fitted values' Gram matrix is coef^T G_VV coef = (C^T coef)^T (C^T coef)
  # with C C^T = G_VV: its eigenvectors are the right singular vectors of C^T coef.
  chol = np.linalg.cholesky(g_vv)
  vecs = np.linalg.svd(chol.T @ coef, full_matrices=False)[2].T          # [q, min(p, q)]
  flat = te.reshape(len(te), -1)
  tv, tm = flat[:, iv] - mean[iv], flat[:, im]
  full = min(coef.shape)
  out = {}
  for k in ranks:
    k_eff = min(int(k), full)
    if k_eff == 0:
      pred = np.broadcast_to(mean[im], tm.shape)
    else:
      v = vecs[:, :k_eff]
      pred = (tv @ coef @ v) @ v.T + mean[im]
    out[k] = float(np.mean((pred - tm) ** 2))
  return out


def rank_k_completion(train_patches, test_patches, visible, masked, ranks,
                      ridge: float = 1e-8) -> dict:
  """``completion_from_moments`` fitted on ``train_patches`` ``[N, L, d]``."""
  mean, gram = pixel_moments(train_patches)
  return completion_from_moments(mean, gram, test_patches, visible, masked, ranks, ridge)


def completion_curve(train_images, test_images, patch_size: int,
                     ratios=(0.25, 0.5, 0.75, 0.9), ranks=(0, 1, 2, 4, 8, 16, 32, 64),
                     num_patterns: int = 3, seed: int = 0) -> dict:
  """``{ratio: {rank: mse}}`` averaged over ``num_patterns`` fixed random patterns.

  The rank ``"full"`` entry is the unconstrained least-squares completion.
  """
  mean, gram = pixel_moments(patch_matrices(train_images, patch_size))
  test = patch_matrices(test_images, patch_size)
  num_patches = test.shape[1]
  rng = np.random.default_rng(seed)
  ranks = list(ranks) + ["full"]
  wanted = [10 ** 9 if k == "full" else k for k in ranks]
  out = {}
  for ratio in ratios:
    per = []
    for _ in range(num_patterns):
      visible, masked = fixed_pattern(num_patches, ratio, rng)
      got = completion_from_moments(mean, gram, test, visible, masked, wanted)
      per.append([got[k] for k in wanted])
    out[float(ratio)] = {str(k): float(v) for k, v in zip(ranks, np.mean(per, axis=0))}
  return out


def analyze(train_images, test_images, patch_size: int, seed: int = 0,
            ratios=(0.25, 0.5, 0.75, 0.9)) -> dict:
  """Spectra of the test images and of their pixel-shuffled null; completion curves."""
  return {
      "data": spectrum_stats(test_images, patch_size),
      "null_shuffled": spectrum_stats(shuffle_pixels(test_images, seed), patch_size),
      "completion": completion_curve(train_images, test_images, patch_size, ratios=ratios,
                                     seed=seed),
      "num_train": int(len(train_images)), "num_test": int(len(test_images)),
  }
