"""mae-jax visualize --workdir=DIR --out=PNG [--num_images=N] [--split=test] [--seed=S]
                  [--images a.jpg b.png ...] [--mask_ratio=R] [--patch_stats=visible|true]
                  [--bands=3,2,1] [--all_bands]"""
from __future__ import annotations

import logging

from absl import flags

from mae_jax.commands import common
from mae_jax.errors import UserError


def define_flags(fv, argv):
  flags.DEFINE_string("workdir", None, "A pretraining workdir (or checkpoint).", flag_values=fv)
  flags.DEFINE_string("out", None, "Output PNG path.", flag_values=fv)
  flags.DEFINE_integer("num_images", 8, "Images (rows) in the grid.", flag_values=fv)
  flags.DEFINE_string("split", None, "Dataset split (default: the eval split).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Masking seed.", lower_bound=0, flag_values=fv)
  flags.DEFINE_list(
      "images", None, "Your own image files (local or gs://, comma- or space-separated) "
      "instead of dataset images: shorter side resized to the model's input, centre-cropped.",
      flag_values=fv)
  flags.DEFINE_float("mask_ratio", None,
      "Fraction of patches masked (default: the model's).", flag_values=fv)
  flags.DEFINE_enum(
      "patch_stats", "visible", ["visible", "true"],  # viz.PATCH_STATS
      "Norm-pix models predict each patch normalised by its own mean and variance: "
      "'visible' (default) gives a masked patch the mean and variance of the visible "
      "patches around it; 'true' uses the hidden patches' own statistics (the official "
      "visualisation; part of the answer, so the picture flatters the model).",
      flag_values=fv)
  flags.DEFINE_string(
      "bands", None, "Images of other than 1 or 3 channels (multispectral): the bands of "
      "the colour composite, red,green,blue as indices from 0 (e.g. 3,2,1 for "
      "Sentinel-2's B4,B3,B2), or one band for grey (default: the first three). Each band "
      "is stretched between its 1st and 99th percentile in the originals.", flag_values=fv)
  flags.DEFINE_bool("all_bands", False, "After each composite row, one grey row per band.",
                    flag_values=fv)
  flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)


def run(fv, args):
  common.setup_logging()
  # ``--images a.jpg b.png``: absl leaves all but the first path in the arguments.
  extra = [a for a in args if not a.startswith("-")]
  if extra and not fv.images:
    raise UserError(f"unexpected arguments {' '.join(extra)}; give image files with "
                    "--images a.jpg b.png ...")
  if fv.num_images < 1:
    raise UserError(f"--num_images={fv.num_images}: show at least 1 image.")
  common.check_output(fv.out, "--out", directory=False)
  import jax
  from mae_jax import loading, viz
  from mae_jax.data import augment, pipeline
  from mae_jax import workdir as workdir_lib
  from mae_jax.models import registry
  loaded = loading.load_mae(fv.workdir, use="mae-jax visualize")
  cfg = loaded.config
  model = loaded.model
  if fv.images:
    workdir_lib.require_modality(
        loaded.workdir, cfg, "image", "--images",
        "Leave --images out to see clips of its dataset reconstructed.")
  if fv.mask_ratio is not None:
    if not 0.0 < fv.mask_ratio < 1.0:
      raise UserError(f"--mask_ratio={fv.mask_ratio} must be in (0, 1).")
    model = model.clone(mask_ratio=fv.mask_ratio)
  tubelet = registry.tubelet_size(cfg)
  bands = None
  if fv.bands is not None:
    try:
      bands = viz.parse_bands(fv.bands, int(cfg.data.channels))
    except ValueError as e:
      raise UserError(f"{e}.") from None
  if fv.images:
    mean, std = pipeline.normalization(cfg.data, dataset_required=False)
    pixels = viz.load_images(fv.images + extra, cfg.data.image_size, cfg.data.channels)
    images = augment.normalize(pixels, mean, std)
  else:
    mean, std = pipeline.normalization(cfg.data)
    images, _ = pipeline.eval_arrays(cfg.data, fv.split or cfg.data.eval_split,
                                     fv.num_images)
  loss, pred, mask = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, train=False, rngs={"masking": jax.random.key(fv.seed)}))(
          loaded.params, images)
  target = cfg.model.get("target", "pixels")
  if target != "pixels":  # (predictions of HOG or teacher features: no picture of them)
    viz.save_png(viz.grid_image(viz.masked_rows(images, mask, cfg.model.patch_size, mean, std,
                                                tubelet),
                                scale=viz.default_scale(cfg.data.image_size),
                                header=viz.target_header(target, clips=bool(tubelet))), fv.out)
    logging.info("wrote %s (step %d, mask ratio %.2f; model.target=%s: the masked input "
                 "only)", fv.out, loaded.step, model.mask_ratio, target)
    return
  norm_pix = bool(cfg.model.norm_pix_loss)
  if not norm_pix and fv.patch_stats != "visible":
    logging.info("the model predicts plain pixels: --patch_stats=%s changes nothing",
                 fv.patch_stats)
  rows = viz.reconstruction_rows(images, pred, mask, cfg.model.patch_size, norm_pix, mean,
                                 std, tubelet,
                                 bool(cfg.model.get("norm_pix_per_channel", False)),
                                 patch_stats=fv.patch_stats)
  header = viz.reconstruction_header(norm_pix, fv.patch_stats, clips=bool(tubelet))
  rows = viz.display_rows(rows, bands, fv.all_bands)
  viz.save_png(viz.grid_image(rows, scale=viz.default_scale(cfg.data.image_size),
                              header=header), fv.out)
  logging.info("wrote %s (step %d, mask ratio %.2f, loss on these images %.4f; %s: %s)",
               fv.out, loaded.step, model.mask_ratio, float(loss),
               "rows" if tubelet else "columns",
               ", ".join(viz.reconstruction_labels(norm_pix, fv.patch_stats)))
