"""mae-jax export --workdir=DIR --format={official,timm,hf,videomae} --out=PATH

Writes a workdir's latest checkpoint (or ``--workdir=DIR/checkpoints/STEP``) as
PyTorch weights. A pretraining workdir: ``official`` -> ``PATH.pth`` + ``PATH.json``
(``MaskedAutoencoderViT`` kwargs), ``timm`` -> a ``local-dir`` folder (or
``PATH.pth`` + ``PATH.json`` for a ``.pth`` PATH), ``hf`` -> a
``ViTMAEForPreTraining`` directory with ``preprocessor_config.json``, ``videomae``
(a video model in VideoMAE's layout) -> a ``VideoMAEForPreTraining`` directory. A fine-tuning
or probing workdir: the classifier (``mae_jax.export.classifier``): official
``models_vit``, a timm folder with its head, or ``ViTForImageClassification``
(probes only). A ``.safetensors`` PATH writes safetensors instead of a pickle.
"""
from __future__ import annotations

import logging

from absl import flags

from mae_jax.commands import common


def define_flags(fv, argv):
  flags.DEFINE_string("workdir", None, "A pretraining, fine-tuning or probing "
      "workdir (or one of its checkpoints).", flag_values=fv)
  flags.DEFINE_enum("format", None, ["official", "timm", "hf", "videomae"],
      "official: facebookresearch/mae MaskedAutoencoderViT; timm: the "
      "encoder as a timm VisionTransformer; hf: ViTMAEForPreTraining; "
      "videomae: VideoMAEForPreTraining (video models).", flag_values=fv)
  flags.DEFINE_string("out", None, "Output file (official, timm) or directory (hf, "
      "videomae).", flag_values=fv)
  flags.mark_flags_as_required(["workdir", "format", "out"], flag_values=fv)


def run(fv, args):
  common.refuse_arguments(args)
  common.setup_logging()
  import jax
  import mae_jax
  from mae_jax import export
  common.check_output(fv.out, "--out", export.writes_directory(fv.format, fv.out))
  from mae_jax.export import classifier
  from mae_jax import checkpoint_io
  from mae_jax import workdir as workdir_lib
  workdir, step = workdir_lib.resolve(fv.workdir)
  config = workdir_lib.read_config(workdir)
  if classifier.is_classifier_config(config):
    parts, step = checkpoint_io.restore_parts(
        workdir, step, jax.sharding.SingleDeviceSharding(jax.devices()[0]),
        ("params", "batch_stats"))
    written = classifier.save(parts["params"], parts.get("batch_stats"), config,
                              fv.format, fv.out)
  else:
    if fv.format != "videomae":
      workdir_lib.require_modality(
          workdir, config, "image", f"--format={fv.format}",
          "Export a video MAE with --format=videomae (Hugging Face VideoMAEForPreTraining; "
          "train it with the hf_layout option of configs/pretrain_video_fmnist.py).")
    loaded = mae_jax.load(fv.workdir)
    step = loaded.step
    written = export.save(loaded.params, loaded.config, fv.format, fv.out)
  logging.info("exported %s (step %d) as %s: %s", workdir, step, fv.format,
               ", ".join(written))
