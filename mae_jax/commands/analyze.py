"""mae-jax analyze --workdir=W --out=DIR [--split=test] [--num_images=256] [--compare=W2]

Measures the claims of "How to Understand Masked Autoencoders" (Cao, Xu, Clifton
2022) on a pretrained MAE and writes ``DIR/report.md``, ``DIR/analysis.json`` and
the plots ``DIR/*.png``. ``--compare`` analyses a second workdir on the same
images and masks and puts the two side by side (e.g. the trained model against
its random initialisation, made with ``mae_jax.analysis.make_random_workdir``).
"""
from __future__ import annotations

import logging
import os
import time

from absl import flags

from mae_jax.commands import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A pretraining workdir (or checkpoint).")
_OUT = flags.DEFINE_string("out", None, "Output directory for report.md, analysis.json, PNGs.")
_COMPARE = flags.DEFINE_string("compare", None,
                               "Optional second workdir, analysed side by side.")
_SPLIT = flags.DEFINE_string("split", "test", "Dataset split of the analysed images.")
_NUM = flags.DEFINE_integer("num_images", 256, "Images analysed (from the split's start).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the masks and random perturbations.")
_JACOBIAN = flags.DEFINE_integer(
    "jacobian_images", 16, "Images for the exact influence Jacobians (the costly part).")
_RATIOS = flags.DEFINE_list("mask_ratios", ["0.25", "0.5", "0.75", "0.9"],
                            "Mask ratios of the reconstruction/completion curves.")
_NUM_TRAIN = flags.DEFINE_integer(
    "num_train", 10000, "Training images used to fit the linear completion baseline.")
flags.mark_flags_as_required(["workdir", "out"])


def _label(workdir: str, other: str | None) -> str:
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
  da, db = a.config.data, b.config.data
  if (da.image_size, da.channels) != (db.image_size, db.channels):
    raise UserError(
        f"--compare needs models of the same input: {a.workdir} takes "
        f"{da.image_size}x{da.image_size}x{da.channels} images, {b.workdir} "
        f"{db.image_size}x{db.image_size}x{db.channels}.")
  if da.get("name") != db.get("name"):
    logging.warning("the two workdirs were trained on different datasets (%s, %s); both "
                    "are analysed on %s", da.get("name"), db.get("name"), da.get("name"))


def run(workdir: str, out: str, compare: str | None = None, split: str = "test",
        num_images: int = 256, seed: int = 0, jacobian_images: int = 16,
        mask_ratios=(0.25, 0.5, 0.75, 0.9), num_train: int = 10000) -> dict:
  """The command as a function: loads, measures, writes; returns the summaries."""
  import mae_jax
  from mae_jax import analysis
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
  settings = analysis.Settings(num_images=num_images, seed=seed,
                               jacobian_images=jacobian_images, mask_ratios=ratios,
                               num_train=num_train)
  loaded = [mae_jax.load(workdir)]
  if compare:
    loaded.append(mae_jax.load(compare))
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
    result = analysis.analyze_model(lo.model, lo.params, images, settings)
    runs.append({"label": label, "meta": _describe(lo, split), "result": result})
  data = {}
  for lo in loaded:
    ps = int(lo.model.patch_size)
    if ps not in data:
      logging.info("patch statistics (patch %d)", ps)
      data[ps] = analysis.analyze_data(train, images, ps, settings)
  out_info = report.write(out, runs, data, settings)
  return out_info


def main(argv):
  del argv
  common.setup_logging()
  t = time.perf_counter()
  info = run(_WORKDIR.value, _OUT.value, _COMPARE.value, _SPLIT.value, _NUM.value,
             _SEED.value, _JACOBIAN.value, _RATIOS.value, _NUM_TRAIN.value)
  for which, s in zip(("first", "second"), info["summaries"]):
    logging.info("%s model: loss %.4f, attention distance %.1f px (uniform %.1f), "
                 "consecutive-layer cosine %.3f, far-influence share %.2f (distance-blind "
                 "%.2f), MSE model %.3f / nearest copy %.3f / diffusion %.3f",
                 which, s["loss"], s["encoder_mean_distance_px"],
                 s["encoder_uniform_distance_px"], s["encoder_cosine"],
                 s["influence_far_share"], s["influence_far_share_uniform"], s["mse_model"],
                 s["mse_nearest_copy"], s["mse_diffusion"])
  logging.info("wrote %s (report.md, analysis.json, %d PNGs) in %.0fs", _OUT.value,
               sum(len(v) for v in info["files"].values()), time.perf_counter() - t)
