"""mae-jax analyze --workdir=W --out=DIR [--split=test] [--num_images=256] [--compare=W2]

Measures the claims of "How to Understand Masked Autoencoders" (Cao, Xu, Clifton
2022) on a pretrained MAE and writes ``DIR/report.md``, ``DIR/analysis.json`` and
the plots ``DIR/*.png``. ``--compare`` analyses a second workdir on the same
images and masks and puts the two side by side (e.g. the trained model against
its random initialisation, made with ``mae_jax.analysis.make_random_workdir``).
"""
from __future__ import annotations

import logging
import time

from absl import flags

from mae_jax.commands import common


def define_flags(fv, argv):
  flags.DEFINE_string("workdir", None, "A pretraining workdir (or checkpoint).", flag_values=fv)
  flags.DEFINE_string("out", None, "Output directory for report.md, analysis.json, PNGs.",
      flag_values=fv)
  flags.DEFINE_string("compare", None,
      "Optional second workdir, analysed side by side.", flag_values=fv)
  flags.DEFINE_string("split", "test", "Dataset split of the analysed images.", flag_values=fv)
  flags.DEFINE_integer("num_images", 256, "Images analysed (from the split's start).",
      lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of the masks and random perturbations.",
      lower_bound=0, flag_values=fv)
  flags.DEFINE_integer(
      "jacobian_images", 16, "Images for the exact influence Jacobians (the costly part).",
      lower_bound=1, flag_values=fv)
  flags.DEFINE_list("mask_ratios", ["0.25", "0.5", "0.75", "0.9"],
      "Mask ratios of the reconstruction/completion curves.", flag_values=fv)
  flags.DEFINE_integer(
      "num_train", 10000, "Training images used to fit the linear completion baseline.",
      lower_bound=1, flag_values=fv)
  flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)


def run(fv, args):
  common.refuse_arguments(args)
  common.setup_logging()
  common.check_output(fv.out, "--out", directory=True)
  from mae_jax import analysis
  t = time.perf_counter()
  info = analysis.analyze_workdirs(
      fv.workdir, fv.out, compare=fv.compare, split=fv.split,
      num_images=fv.num_images, seed=fv.seed, jacobian_images=fv.jacobian_images,
      mask_ratios=fv.mask_ratios, num_train=fv.num_train)
  for which, s in zip(("first", "second"), info["summaries"]):
    logging.info("%s model: loss %.4f, attention distance %.1f px (uniform %.1f), "
                 "consecutive-layer cosine %.3f, far-influence share %.2f (distance-blind "
                 "%.2f), MSE model %.3f / nearest copy %.3f / diffusion %.3f",
                 which, s["loss"], s["encoder_mean_distance_px"],
                 s["encoder_uniform_distance_px"], s["encoder_cosine"],
                 s["influence_far_share"], s["influence_far_share_uniform"], s["mse_model"],
                 s["mse_nearest_copy"], s["mse_diffusion"])
  logging.info("wrote %s (report.md, analysis.json, %d PNGs) in %.0fs", fv.out,
               sum(len(v) for v in info["files"].values()), time.perf_counter() - t)
