"""Claim 4: MAE fills a masked patch by *global* interpolation, not from its neighbours.

Influence. With the mask fixed (explicit ``noise``), the model is a function
``f`` from the visible patches' pixels ``[K, d]`` to its predictions for the
masked patches ``[M, d]``. The influence of visible patch ``v`` on masked patch
``m`` is the Frobenius norm of the Jacobian block ``d f_m / d x_v`` (``d x d``),
computed exactly with ``jax.jacfwd``. From the ``[M, K]`` influence matrices:

* ``influence_by_distance``: mean influence at each Euclidean distance between
  patch centres (in patches);
* ``far_share``: per masked patch, the share of its total influence that comes
  from visible patches at Chebyshev distance > 1 (outside its 8 neighbours),
  averaged over masked patches; ``far_share_uniform`` is what equal influence
  from every visible patch would give (the share of visible patches that are far);
* ``nearest_share``: share of influence from the nearest visible patch (all of
  them when several are equally near).

Reconstruction. Mean squared error per masked pixel (normalised pixel space)
on the same masks for the model and three local/trivial baselines:
``nearest_copy`` (each masked patch copies the visible patch with the nearest
centre, ties to the lower index), ``diffusion`` (harmonic inpainting: masked
pixels solve the discrete Laplace equation with the visible pixels fixed, by
Jacobi iteration from the visible mean; Neumann image borders) and ``mean_fill``
(the mean of the image's visible pixels). With ``norm_pix_loss`` the model
predicts normalised patches; they are mapped back with the true patch's mean
and variance (as MAE's visualisation does), which gives the model that
information for free -- noted in the report.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.analysis import hooks
from mae_jax.models import masking


# ------------------------------------------------------------------- influence


def influence_matrix(fn: Callable, visible) -> np.ndarray:
  """``[M, K]`` Frobenius norms of the Jacobian blocks of ``fn: [K, d] -> [M, d']``."""
  norms = hooks.jit(lambda v: jnp.sqrt(jnp.sum(jax.jacfwd(fn)(v) ** 2, axis=(1, 3))))
  return np.asarray(norms(jnp.asarray(visible, jnp.float32)))     # [M, d', K, d] -> [M, K]


def split_indices(noise, num_visible: int) -> tuple[np.ndarray, np.ndarray]:
  """``(visible [B, K], masked [B, M])`` patch indices in MAE's token order."""
  order = np.argsort(np.asarray(noise), axis=1, kind="stable")
  return order[:, :num_visible], order[:, num_visible:]


_JIT_CACHE: dict = {}


def _influence_fn(model, patch_size: int, grid, channels: int):
  """Jitted ``(params, patches [B, L, d], noise, vis, msk) -> influence [B, M, K]``."""
  key = ("influence", model, patch_size, tuple(grid), channels)
  if key in _JIT_CACHE:
    return _JIT_CACHE[key]

  def one(params, patches, noise, vis, msk):
    def f(v):
      full = patches.at[vis].set(v)
      image = masking.unpatchify(full[None], patch_size, grid, channels)
      _, pred, _ = model.apply({"params": params}, image, train=False, noise=noise[None])
      return pred[0, msk]
    jac = jax.jacfwd(f)(patches[vis])                          # [M, d, K, d]
    return jnp.sqrt(jnp.sum(jac ** 2, axis=(1, 3)))

  _JIT_CACHE[key] = hooks.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)), fast_compile=False)
  return _JIT_CACHE[key]


def model_influence(model, params, images, noise, chunk_size: int = 4) -> dict:
  """Influence matrices ``[B, M, K]`` of ``model`` with masks ranked by ``noise``."""
  images = np.asarray(images, np.float32)
  p = model.patch_size
  grid = masking.grid_size(images.shape[1:3], p)
  patches = np.asarray(masking.patchify(jnp.asarray(images), p))
  keep = masking.num_visible(patches.shape[1], model.mask_ratio)
  vis, msk = split_indices(noise, keep)
  fn = _influence_fn(model, p, grid, images.shape[-1])
  parts = []
  for start in range(0, len(images), chunk_size):
    sl = slice(start, start + chunk_size)
    parts.append(np.asarray(fn(params, jnp.asarray(patches[sl]), jnp.asarray(noise[sl]),
                               jnp.asarray(vis[sl]), jnp.asarray(msk[sl]))))
  return {"influence": np.concatenate(parts), "visible": vis, "masked": msk, "grid": grid}


def influence_stats(influence, visible, masked, grid) -> dict:
  """Distance profile, far share, nearest share of ``[B, M, K]`` influence matrices."""
  influence = np.asarray(influence, np.float64)
  gw = grid[1]
  vr, vc = np.asarray(visible) // gw, np.asarray(visible) % gw
  mr, mc = np.asarray(masked) // gw, np.asarray(masked) % gw
  dy = mr[:, :, None] - vr[:, None, :]
  dx = mc[:, :, None] - vc[:, None, :]
  euclid = np.sqrt(dy ** 2 + dx ** 2)                      # [B, M, K]
  cheb = np.maximum(np.abs(dy), np.abs(dx))
  total = influence.sum(-1)                                # [B, M]
  ok = total > 0
  far = np.where(cheb > 1, influence, 0.0).sum(-1)
  far_share = float((far[ok] / total[ok]).mean()) if ok.any() else float("nan")
  far_uniform = float((cheb > 1).mean(-1).mean())
  # the nearest visible patch(es): every one at the minimal distance
  nearest = euclid <= euclid.min(-1, keepdims=True) + 1e-9
  near_infl = np.where(nearest, influence, 0.0).sum(-1)
  nearest_share = float((near_infl[ok] / total[ok]).mean()) if ok.any() else float("nan")
  # mean influence per distance
  rounded = np.round(euclid, 4)
  distances = np.unique(rounded)
  profile = [float(influence[rounded == d].mean()) for d in distances]
  # share of the total influence per distance, normalised per masked patch
  share = np.where(ok[..., None], influence / np.where(ok, total, 1.0)[..., None], 0.0)
  share_profile = [float(share[rounded == d].sum() / max(ok.sum(), 1)) for d in distances]
  counts = [int((rounded == d).sum()) for d in distances]
  return {"distances": distances.tolist(), "mean_influence": profile,
          "influence_share": share_profile, "pair_counts": counts,
          "far_share": far_share, "far_share_uniform": far_uniform,
          "nearest_share": nearest_share,
          "mean_distance_weighted": float(((influence * euclid).sum(-1)[ok] /
                                           total[ok]).mean()) if ok.any() else float("nan"),
          "mean_distance_uniform": float(euclid.mean())}


# --------------------------------------------------------------- reconstruction


def nearest_copy(patches, mask, grid) -> np.ndarray:
  """Each masked patch replaced by the visible patch with the nearest centre."""
  patches = np.asarray(patches)
  mask = np.asarray(mask) > 0.5
  gh, gw = grid
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  dist = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2  # [L, L]
  out = patches.copy()
  for b in range(len(patches)):
    d = np.where(mask[b][None, :], np.inf, dist.astype(np.float64))   # keys: visible only
    src = np.argmin(d, axis=1)
    out[b, mask[b]] = patches[b, src[mask[b]]]
  return out


def pixel_mask(mask, patch_size: int, grid, channels: int = 1) -> np.ndarray:
  """``[B, H, W, 1]`` booleans, True on the pixels of masked patches."""
  mask = np.asarray(mask, np.float32)
  rep = np.repeat(mask[..., None], patch_size * patch_size, -1)
  return np.asarray(masking.unpatchify(rep, patch_size, grid, 1)) > 0.5


def diffusion_inpaint(images, pixel_masked, iters: int = 600) -> np.ndarray:
  """Harmonic inpainting by Jacobi iteration; visible pixels fixed (see module doc)."""
  x = jnp.asarray(images, jnp.float32)
  hole = jnp.broadcast_to(jnp.asarray(pixel_masked, bool), x.shape)
  return np.asarray(_DIFFUSION(x, hole, int(iters)))


def _diffusion(x, hole, iters):
  count = jnp.maximum((~hole).sum(axis=(1, 2), keepdims=True), 1)
  fill = jnp.where(hole, 0.0, x).sum(axis=(1, 2), keepdims=True) / count
  y = jnp.where(hole, fill, x)

  def step(_, y):
    p = jnp.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    avg = 0.25 * (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:])
    return jnp.where(hole, avg, x)

  return jax.lax.fori_loop(0, iters, step, y)


_DIFFUSION = hooks.jit(_diffusion, fast_compile=False, static_argnums=2)


def mean_fill(images, pixel_masked) -> np.ndarray:
  x = np.asarray(images, np.float64)
  hole = np.broadcast_to(np.asarray(pixel_masked, bool), x.shape)
  count = np.maximum((~hole).sum(axis=(1, 2), keepdims=True), 1)
  fill = np.where(hole, 0.0, x).sum(axis=(1, 2), keepdims=True) / count
  return np.where(hole, fill, x)


def masked_mse(pred_patches, target_patches, mask) -> float:
  """Mean squared error per pixel over the masked patches."""
  err = ((np.asarray(pred_patches, np.float64) - np.asarray(target_patches)) ** 2).mean(-1)
  mask = np.asarray(mask, np.float64)
  return float((err * mask).sum() / max(mask.sum(), 1.0))


def model_pixels(pred, images, patch_size: int, norm_pix_loss: bool) -> np.ndarray:
  """The model's predictions in the images' (normalised) pixel space, as patches."""
  pred = np.asarray(pred, np.float64)
  if not norm_pix_loss:
    return pred
  target = np.asarray(masking.patchify(jnp.asarray(images, jnp.float32), patch_size),
                      np.float64)
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, keepdims=True, ddof=1)
  return pred * np.sqrt(var + 1e-6) + mean


def reconstruction_errors(images, pred, mask, patch_size: int, norm_pix_loss: bool,
                          diffusion_iters: int = 600) -> dict:
  """Masked-pixel MSE of the model and the baselines on the same masks."""
  images = np.asarray(images, np.float32)
  grid = masking.grid_size(images.shape[1:3], patch_size)
  channels = images.shape[-1]
  target = np.asarray(masking.patchify(jnp.asarray(images), patch_size), np.float64)
  holes = pixel_mask(mask, patch_size, grid)
  patchify = lambda x: np.asarray(masking.patchify(jnp.asarray(x, jnp.float32), patch_size))
  return {
      "model": masked_mse(model_pixels(pred, images, patch_size, norm_pix_loss), target, mask),
      "nearest_copy": masked_mse(nearest_copy(target, mask, grid), target, mask),
      "diffusion": masked_mse(patchify(diffusion_inpaint(images, holes, diffusion_iters)),
                              target, mask),
      "mean_fill": masked_mse(patchify(mean_fill(images, holes)), target, mask),
      "channels": channels,
  }


def _predict_fn(model):
  key = ("predict", model)
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = hooks.jit(
        lambda p, x, n: model.apply({"params": p}, x, train=False, noise=n)[1],
        fast_compile=False)
  return _JIT_CACHE[key]


def errors_vs_ratio(model, params, images, seed: int, ratios=(0.25, 0.5, 0.75, 0.9),
                    chunk_size: int = 128, trace=None) -> dict:
  """``{ratio: reconstruction_errors}`` with the model re-run at each mask ratio.

  At the model's own ratio a given ``trace`` (same images) is reused.
  """
  analysis_model, make_noise, with_mask_ratio = (hooks.analysis_model, hooks.make_noise,
                                                 hooks.with_mask_ratio)
  images = np.asarray(images, np.float32)
  num_patches = int(np.prod(masking.grid_size(images.shape[1:3], model.patch_size)))
  out = {}
  for i, ratio in enumerate(ratios):
    if trace is not None and abs(float(ratio) - float(model.mask_ratio)) < 1e-9:
      pred, mask = trace.pred, trace.mask
    else:
      m = analysis_model(with_mask_ratio(model, ratio))
      noise = make_noise(seed + 7919 * (i + 1), len(images), num_patches)
      fn = _predict_fn(m)
      pred = np.concatenate([np.asarray(fn(params, jnp.asarray(images[s:s + chunk_size]),
                                           jnp.asarray(noise[s:s + chunk_size])))
                             for s in range(0, len(images), chunk_size)])
      keep = masking.num_visible(num_patches, ratio)
      mask = (np.argsort(np.argsort(noise, axis=1), axis=1) >= keep).astype(np.float32)
    out[float(ratio)] = reconstruction_errors(images, pred, mask, model.patch_size,
                                              model.norm_pix_loss)
  return out


def analyze(model, params, trace, seed: int = 0, jacobian_images: int = 32,
            ratios=(0.25, 0.5, 0.75, 0.9)) -> dict:
  """Influence statistics on ``jacobian_images`` images; errors at the model's ratio
  (on the captured pass) and versus mask ratio."""
  model = hooks.analysis_model(model)
  n = min(jacobian_images, len(trace.images))
  infl = model_influence(model, params, trace.images[:n], trace.noise[:n])
  stats = influence_stats(infl["influence"], infl["visible"], infl["masked"], infl["grid"])
  stats["num_images"] = n
  return {
      "influence": stats,
      "reconstruction": reconstruction_errors(trace.images, trace.pred, trace.mask,
                                              trace.patch_size, model.norm_pix_loss),
      "reconstruction_vs_ratio": errors_vs_ratio(model, params, trace.images, seed, ratios,
                                                 trace=trace),
      "mask_ratio": float(model.mask_ratio),
      "norm_pix_loss": bool(model.norm_pix_loss),
  }
