"""Measurements of the claims of "How to Understand Masked Autoencoders" (Cao, Xu
and Clifton, 2022) on a trained MAE; ``mae-jax analyze`` writes them as a report.

One module per claim, each a set of pure functions plus an ``analyze`` entry:

* ``attention_kernel``: attention as an integral kernel over patch displacement;
* ``stability``: layer-to-layer change and per-block Lipschitz estimates;
* ``low_rank``: singular spectra of patch matrices, rank-k linear completion;
* ``interpolation``: Jacobian influence of visible on masked patches versus
  distance, and the model against local inpainting baselines.

``hooks`` runs the model with its intermediates captured; ``report`` writes
``report.md``, ``analysis.json`` and the plots. See ``docs/analysis.md``.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np


@dataclasses.dataclass
class Settings:
  """What ``analyze_model``/``analyze_data`` measure and on how much data."""
  num_images: int = 256                 # evaluation images (all measures but influence)
  seed: int = 0                         # masks (noise) and random directions
  jacobian_images: int = 16             # images for the exact influence Jacobians
  mask_ratios: tuple = (0.25, 0.5, 0.75, 0.9)   # reconstruction/completion curves
  num_train: int = 10000                # training images for the linear completion
  lipschitz_images: int = 32
  chunk_size: int = 64


def analyze_model(model, params, images, settings: Settings | None = None) -> dict:
  """Claims 1, 2 and 4 (everything that needs the model) on ``images`` (NHWC, normalised)."""
  from mae_jax.analysis import attention_kernel, hooks, interpolation, stability
  from mae_jax.models import masking
  settings = settings or Settings()
  images = np.asarray(images, np.float32)
  grid = masking.grid_size(images.shape[1:3], model.patch_size)
  noise = hooks.make_noise(settings.seed, len(images), grid[0] * grid[1])
  timings = {}
  t = time.perf_counter()
  trace = hooks.capture(model, params, images, noise, chunk_size=settings.chunk_size)
  timings["capture"] = time.perf_counter() - t
  out = {"loss": trace.loss, "num_images": int(len(images)), "mask_ratio": model.mask_ratio,
         "grid": list(grid), "patch_size": model.patch_size}
  for name, fn in (
      ("attention", lambda: attention_kernel.analyze(trace)),
      ("stability", lambda: stability.analyze(model, params, trace, seed=settings.seed,
                                              max_images=settings.lipschitz_images)),
      ("interpolation", lambda: interpolation.analyze(
          model, params, trace, seed=settings.seed,
          jacobian_images=settings.jacobian_images, ratios=settings.mask_ratios))):
    t = time.perf_counter()
    out[name] = fn()
    timings[name] = time.perf_counter() - t
    logging.info("  %s: %.1fs", name, timings[name])
  out["timings_s"] = timings
  return out


def analyze_data(train_images, test_images, patch_size: int,
                 settings: Settings | None = None) -> dict:
  """Claim 3 (model-free): patch spectra and rank-k completion versus mask ratio."""
  from mae_jax.analysis import low_rank
  settings = settings or Settings()
  t = time.perf_counter()
  out = low_rank.analyze(train_images, test_images, patch_size, seed=settings.seed,
                         ratios=settings.mask_ratios)
  out["timings_s"] = {"low_rank": time.perf_counter() - t}
  return out


def random_params(config, seed: int = 0):
  """Freshly initialised parameters of ``config``'s model (as pretraining starts)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from mae_jax.models import registry
  model = registry.build_mae(config)
  key = jax.random.key(seed)
  rngs = {"params": jax.random.fold_in(key, 0), "masking": jax.random.fold_in(key, 1)}
  shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  from mae_jax.analysis.hooks import jit
  params = jit(lambda r: model.init(r, jnp.zeros(shape, jnp.float32))["params"])(rngs)
  return model, nn.unbox(params)


def make_random_workdir(workdir: str, config, seed: int = 0) -> str:
  """A workdir holding a randomly initialised model of ``config`` (step 0).

  The reference for ``mae-jax analyze --compare``: what the measures give
  before any training.
  """
  from mae_jax.train import checkpoint
  _, params = random_params(config, seed)
  checkpoint.write_workdir(workdir, config, params, step=0)
  return workdir
