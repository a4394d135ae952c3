"""mae-jax export --workdir=DIR --format={official,timm,hf} --out=PATH

Writes a workdir's latest checkpoint (or ``--workdir=DIR/checkpoints/STEP``) as
PyTorch weights: ``official`` -> ``PATH.pth`` + ``PATH.json`` (constructor kwargs),
``timm`` -> ``PATH.pth`` + ``PATH.json`` (``timm.create_model`` name and kwargs),
``hf`` -> a ``ViTMAEForPreTraining`` directory. A ``.safetensors`` PATH writes
safetensors instead of a pickle for ``official``/``timm``.
"""
from __future__ import annotations

import logging

from absl import flags

from mae_jax.commands import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A pretraining workdir (or checkpoint).")
_FORMAT = flags.DEFINE_enum("format", None, ["official", "timm", "hf"],
                            "official: facebookresearch/mae MaskedAutoencoderViT; timm: the "
                            "encoder as a timm VisionTransformer; hf: ViTMAEForPreTraining.")
_OUT = flags.DEFINE_string("out", None, "Output file (official, timm) or directory (hf).")
flags.mark_flags_as_required(["workdir", "format", "out"])


def main(argv):
  del argv
  common.setup_logging()
  import mae_jax
  from mae_jax import export
  loaded = mae_jax.load(_WORKDIR.value)
  written = export.save(loaded.params, loaded.config, _FORMAT.value, _OUT.value)
  logging.info("exported %s (step %d) as %s: %s", loaded.workdir, loaded.step, _FORMAT.value,
               ", ".join(written))
