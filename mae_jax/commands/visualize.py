"""mae-jax visualize --workdir=DIR --out=PNG [--num_images=N] [--split=test] [--seed=S]
                  [--images a.jpg b.png ...] [--mask_ratio=R]"""
from __future__ import annotations

import logging

from absl import flags

from mae_jax.commands import common
from mae_jax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "A pretraining workdir (or checkpoint).")
_OUT = flags.DEFINE_string("out", None, "Output PNG path.")
_NUM = flags.DEFINE_integer("num_images", 8, "Images (rows) in the grid.")
_SPLIT = flags.DEFINE_string("split", None, "Dataset split (default: the eval split).")
_SEED = flags.DEFINE_integer("seed", 0, "Masking seed.")
_IMAGES = flags.DEFINE_list(
    "images", None, "Your own image files (local or gs://, comma- or space-separated) "
    "instead of dataset images: shorter side resized to the model's input, centre-cropped.")
_MASK_RATIO = flags.DEFINE_float("mask_ratio", None,
                                 "Fraction of patches masked (default: the model's).")
flags.mark_flags_as_required(["workdir", "out"])


def _images_after_flag(argv: list[str]) -> list[str]:
  """Paths given as ``--images a.jpg b.png`` (absl leaves all but the first in argv)."""
  return [a for a in argv[1:] if not a.startswith("-")]


def main(argv):
  common.setup_logging()
  extra = _images_after_flag(argv)
  if extra and not _IMAGES.value:
    raise UserError(f"unexpected arguments {' '.join(extra)}; give image files with "
                           "--images a.jpg b.png ...")
  if _NUM.value < 1:
    raise UserError(f"--num_images={_NUM.value}: show at least 1 image.")
  common.check_output(_OUT.value, "--out", directory=False)
  import jax
  from mae_jax import loading, viz
  from mae_jax.data import augment, pipeline
  loaded = loading.load_mae(_WORKDIR.value, use="mae-jax visualize")
  cfg = loaded.config
  model = loaded.model
  if _MASK_RATIO.value is not None:
    if not 0.0 < _MASK_RATIO.value < 1.0:
      raise UserError(f"--mask_ratio={_MASK_RATIO.value} must be in (0, 1).")
    model = model.clone(mask_ratio=_MASK_RATIO.value)
  if _IMAGES.value:
    mean, std = pipeline.normalization(cfg.data, dataset_required=False)
    pixels = viz.load_images(_IMAGES.value + extra, cfg.data.image_size, cfg.data.channels)
    images = augment.normalize(pixels, mean, std)
  else:
    mean, std = pipeline.normalization(cfg.data)
    images, _ = pipeline.eval_arrays(cfg.data, _SPLIT.value or cfg.data.eval_split,
                                     _NUM.value)
  loss, pred, mask = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, train=False, rngs={"masking": jax.random.key(_SEED.value)}))(
          loaded.params, images)
  rows = viz.reconstruction_rows(images, pred, mask, cfg.model.patch_size,
                                 cfg.model.norm_pix_loss, mean, std)
  viz.save_png(viz.grid_image(rows, scale=viz.default_scale(cfg.data.image_size)), _OUT.value)
  logging.info("wrote %s (step %d, mask ratio %.2f, loss on these images %.4f; columns: "
               "original, masked, reconstruction, reconstruction + visible)", _OUT.value,
               loaded.step, model.mask_ratio, float(loss))
