"""Every claim's measure on a model (``analyze_model``), on the data alone
(``analyze_data``) or on one or two workdirs (``analyze_workdirs``: ``mae-jax analyze``
as a function, written as a report by ``mae_jax.analysis.report``); and the random
reference workdir (``make_random_workdir``) to compare a trained model with.
"""
from __future__ import annotations

import dataclasses
import logging
import os
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
  model, params = hooks.analysis_model(model), hooks.analysis_params(params)
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
  shape = registry.input_shape(config)
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


def _label(workdir: str, other: str | None) -> str | None:
  """The workdir's folder name; None when both workdirs have the same one."""
  name = os.path.basename(os.path.normpath(workdir)) or workdir
  if other is not None and os.path.basename(os.path.normpath(other)) == name:
    return None
  return name


def _describe(loaded, split: str) -> dict:
  m = loaded.config.model
  return {"workdir": loaded.workdir, "step": int(loaded.step), "split": split,
          "model": (f"{m.get('name', '?')}: patch {m.patch_size}, enc {m.embed_dim}x"
                    f"{m.depth} ({m.num_heads} heads), dec {m.decoder_embed_dim}x"
                    f"{m.decoder_depth} ({m.decoder_num_heads} heads)")}


def _check_comparable(a, b):
  from mae_jax.errors import UserError
  from mae_jax.sizes import image_hw
  da, db = a.config.data, b.config.data
  (ha, wa), (hb, wb) = image_hw(da.image_size), image_hw(db.image_size)
  if (ha, wa, da.channels) != (hb, wb, db.channels):
    raise UserError(
        f"--compare needs models of the same input: {a.workdir} takes "
        f"{ha}x{wa}x{da.channels} images, {b.workdir} {hb}x{wb}x{db.channels}.")
  if da.get("name") != db.get("name"):
    logging.warning("the two workdirs were trained on different datasets (%s, %s); both "
                    "are analysed on %s", da.get("name"), db.get("name"), da.get("name"))


def analyze_workdirs(workdir: str, out: str, compare: str | None = None,
                     split: str = "test", num_images: int = 256, seed: int = 0,
                     jacobian_images: int = 16, mask_ratios=(0.25, 0.5, 0.75, 0.9),
                     num_train: int = 10000) -> dict:
  """``mae-jax analyze`` as a function: loads, measures, writes; returns the summaries.

  ``compare``: a second workdir analysed on the same images and masks.
  """
  from mae_jax import loading
  from mae_jax.analysis import report
  from mae_jax.data import pipeline
  from mae_jax.errors import UserError
  if num_images < 2:
    raise UserError(f"--num_images={num_images}: analyse at least 2 images.")
  if jacobian_images < 1:
    raise UserError(f"--jacobian_images={jacobian_images} must be >= 1.")
  try:
    ratios = tuple(float(r) for r in mask_ratios)
  except ValueError:
    raise UserError(f"--mask_ratios={','.join(map(str, mask_ratios))}: give numbers in "
                    "(0, 1), e.g. 0.25,0.5,0.75,0.9.") from None
  if not ratios or not all(0.0 < r < 1.0 for r in ratios):
    raise UserError(f"--mask_ratios={','.join(map(str, mask_ratios))}: every ratio must "
                    "be in (0, 1).")
  settings = Settings(num_images=num_images, seed=seed, jacobian_images=jacobian_images,
                      mask_ratios=ratios, num_train=num_train)
  from mae_jax import workdir as workdir_lib
  for path in (workdir, compare) if compare else (workdir,):
    # before the weights are read: the measures are of 2-D patch grids
    workdir_lib.require_modality(
        path, workdir_lib.read_config(workdir_lib.resolve(path)[0]), "image",
        "mae-jax analyze", "Its measures (attention distance in pixels, influence over "
        "the 2-D patch grid) are defined for image MAEs; look at a video MAE with "
        "mae-jax visualize.")
    target = workdir_lib.read_config(workdir_lib.resolve(path)[0]).model.get("target", "pixels")
    if target != "pixels":
      raise UserError(f"{path} holds a model pretrained with model.target={target}; mae-jax "
                      "analyze compares pixel reconstructions with interpolation baselines, "
                      "which needs a model that predicts pixels. Probe or fine-tune its "
                      "encoder instead (mae-jax linprobe / finetune).")
  loaded = [loading.load_mae(workdir, use="mae-jax analyze")]
  if compare:
    loaded.append(loading.load_mae(compare, use="mae-jax analyze"))
    _check_comparable(loaded[0], loaded[1])
  data_config = loaded[0].config.data
  t = time.perf_counter()
  images, _ = pipeline.eval_arrays(data_config, split, num_images)
  train, _ = pipeline.eval_arrays(data_config, data_config.split, num_train)
  logging.info("analysing %d %s images (%d training images for the linear baseline), "
               "%.1fs to load", len(images), split, len(train), time.perf_counter() - t)
  labels = [_label(workdir, compare), _label(compare, workdir) if compare else None]
  labels = [l or default for l, default in zip(labels, ("A", "B"))]
  runs = []
  for lo, label in zip(loaded, labels):
    logging.info("model %s (%s, step %d)", label, lo.workdir, lo.step)
    result = analyze_model(lo.model, lo.params, images, settings)
    runs.append({"label": label, "meta": _describe(lo, split), "result": result})
  data = {}
  for lo in loaded:
    ps = int(lo.model.patch_size)
    if ps not in data:
      logging.info("patch statistics (patch %d)", ps)
      data[ps] = analyze_data(train, images, ps, settings)
  return report.write(out, runs, data, settings)
