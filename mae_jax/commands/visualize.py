"""mae-jax visualize --workdir=DIR --out=PNG [--num_images=N] [--split=test] [--seed=S]"""
from __future__ import annotations

import logging

from absl import flags

from mae_jax.commands import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A pretraining workdir (or checkpoint).")
_OUT = flags.DEFINE_string("out", None, "Output PNG path.")
_NUM = flags.DEFINE_integer("num_images", 8, "Images (rows) in the grid.")
_SPLIT = flags.DEFINE_string("split", None, "Dataset split (default: the eval split).")
_SEED = flags.DEFINE_integer("seed", 0, "Masking seed.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  common.setup_logging()
  import jax
  import mae_jax
  from mae_jax import viz
  from mae_jax.data import pipeline
  loaded = mae_jax.load(_WORKDIR.value)
  cfg = loaded.config
  images, _ = pipeline.eval_arrays(cfg.data, _SPLIT.value or cfg.data.eval_split,
                                   _NUM.value)
  loss, pred, mask = jax.jit(lambda p, x: loaded.model.apply(
      {"params": p}, x, train=False, rngs={"masking": jax.random.key(_SEED.value)}))(
          loaded.params, images)
  mean, std = pipeline.normalization(cfg.data)
  rows = viz.reconstruction_rows(images, pred, mask, cfg.model.patch_size,
                                 cfg.model.norm_pix_loss, mean, std)
  viz.save_png(viz.grid_image(rows, scale=viz.default_scale(cfg.data.image_size)), _OUT.value)
  logging.info("wrote %s (step %d, loss on these images %.4f; columns: original, masked, "
               "reconstruction, reconstruction + visible)", _OUT.value, loaded.step, float(loss))
