"""mae-jax import --in=PATH --format={official,timm,hf} --workdir=DIR [--image_size=N]
[--config=FILE]

Builds a workdir (config + step-0 checkpoint with a fresh optimizer) from PyTorch
weights; ``mae_jax.load``, ``pretrain`` (continues), ``finetune``, ``linprobe`` and
``analyze`` accept it. Reads ``.pth`` with ``torch.load(weights_only=True)`` or
safetensors -- never arbitrary pickles. The architecture comes from the tensor
shapes plus the JSON beside the weights (``PATH.json``; ``config.json`` for hf),
or from ``--config`` when given. Encoder-only files (the released
``mae_pretrain_vit_*.pth``, timm) get a freshly initialised decoder.
"""
from __future__ import annotations

import logging
import os

from absl import flags
from ml_collections import config_flags

from mae_jax.commands import common
from mae_jax.errors import UserError

_IN = flags.DEFINE_string("in", None, "Weights: a .pth/.bin/.safetensors file, or a Hugging "
                          "Face model directory for --format=hf.")
_FORMAT = flags.DEFINE_enum("format", None, ["official", "timm", "hf"],
                            "Layout of the weights: official (facebookresearch/mae), timm "
                            "(VisionTransformer encoder) or hf (ViTMAEForPreTraining).")
_WORKDIR = flags.DEFINE_string("workdir", None, "New workdir to create.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Target image size (default: the one the weights' position tables "
    "are for). The model uses the fixed sin-cos tables of the new grid.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional experiment config: the architecture to load into (the weights "
    "must fit it) and the data/optimizer settings the workdir keeps.", lock_config=True)
_SEED = flags.DEFINE_integer("seed", None, "Seed of a fresh decoder (default: config.seed).")
flags.mark_flags_as_required(["in", "format", "workdir"])


def main(argv):
  del argv
  common.setup_logging()
  workdir = _WORKDIR.value
  from mae_jax.train import checkpoint
  if os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)) or os.path.exists(
      os.path.join(workdir, checkpoint.CHECKPOINT_DIR)):
    raise UserError(f"{workdir} already holds a workdir; import into a new --workdir.")
  from mae_jax import export
  imported = export.import_file(_IN.value, _FORMAT.value, _CONFIG.value,
                                image_size=_IMAGE_SIZE.value, seed=_SEED.value)
  checkpoint.write_workdir(workdir, imported.config, imported.params)
  m = imported.config.model
  logging.info("imported %s (%s) into %s: ViT %d wide, depth %d, %d heads, patch %d, "
               "image %d, %s decoder", _IN.value, _FORMAT.value, workdir, m.embed_dim, m.depth,
               m.num_heads, m.patch_size, imported.config.data.image_size,
               "imported" if imported.has_decoder else "fresh")
