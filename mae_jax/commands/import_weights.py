"""mae-jax import --in=PATH --format={official,timm,hf,videomae} --workdir=DIR [--image_size=N]
[--config=FILE]

Builds a workdir (config + step-0 checkpoint with a fresh optimizer) from PyTorch
weights; ``mae_jax.load``, ``pretrain`` (continues), ``finetune``, ``linprobe`` and
``analyze`` accept it. A classifier (official ``models_vit`` / timm weights with a
head, e.g. the released ``mae_finetuned_vit_*.pth``) becomes a fine-tuning (or
probing) workdir: ``mae-jax evaluate`` evaluates it, ``mae-jax finetune``
continues it, ``init_from`` accepts it. Reads ``.pth`` with ``torch.load(weights_only=True)`` or
safetensors -- never arbitrary pickles. The architecture comes from the tensor
shapes plus the JSON beside the weights (``PATH.json``; ``config.json`` for hf),
or from ``--config`` when given. Encoder-only files (the released
``mae_pretrain_vit_*.pth``, timm) get a freshly initialised decoder.
``--format=videomae`` reads a Hugging Face ``VideoMAEForPreTraining`` directory
into a video workdir (its ``config.json`` gives frames, tubelet and sizes; the
model takes VideoMAE's layout, ``config_lib.videomae_layout``).
"""
from __future__ import annotations

import logging

from absl import flags
from ml_collections import config_flags

from mae_jax import fileio
from mae_jax.commands import common
from mae_jax.errors import UserError


def define_flags(fv, argv):
  flags.DEFINE_string("in", None, "Weights: a .pth/.bin/.safetensors file, or a Hugging "
      "Face model directory for --format=hf/videomae, or a timm "
      "local-dir folder.", flag_values=fv)
  flags.DEFINE_enum("format", None, ["official", "timm", "hf", "videomae"],
      "Layout of the weights: official (facebookresearch/mae), timm "
      "(VisionTransformer encoder), hf (ViTMAEForPreTraining) or "
      "videomae (VideoMAEForPreTraining).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "New workdir to create.", flag_values=fv)
  flags.DEFINE_integer(
      "image_size", None, "Target image size (default: the one the weights' position tables "
      "are for). The model uses the fixed sin-cos tables of the new grid.", lower_bound=1,
      flag_values=fv)
  config_flags.DEFINE_config_file(
      "config", None, "Optional experiment config: the architecture to load into (the weights "
      "must fit it) and the data/optimizer settings the workdir keeps.",
      lock_config=True, flag_values=fv, sys_argv=argv)
  flags.DEFINE_integer("seed", None, "Seed of a fresh decoder (default: config.seed).",
      lower_bound=0, flag_values=fv)
  flags.mark_flags_as_required(["in", "format", "workdir"], flag_values=fv)


def run(fv, args):
  common.refuse_arguments(args)
  common.setup_logging()
  workdir = fv.workdir
  from mae_jax import workdir as workdir_lib
  from mae_jax.train import checkpoint
  if fileio.exists(fileio.join(workdir, workdir_lib.CONFIG_FILE)) or fileio.exists(
      fileio.join(workdir, workdir_lib.CHECKPOINT_DIR)):
    raise UserError(f"{workdir} already holds a workdir; import into a new --workdir.")
  common.check_output(workdir, "--workdir", directory=True)
  from mae_jax import export
  from mae_jax.export import classifier
  sd, meta, notices = export.load_file(fv["in"].value, fv.format)
  if classifier.is_classifier_state_dict(sd):
    if fv.format in ("hf", "videomae"):
      raise UserError("importing a Hugging Face classifier is not supported; export it to "
                      "a timm or official state dict.")
    params, batch_stats, config = classifier.from_torch_state_dict(sd, fv.format, meta,
                                                                   source=fv["in"].value)
    if fv.config is not None:
      config = _with_architecture(fv.config, config)
    _check(config, fv)
    from mae_jax.train import classifier as classifier_task
    classifier_task.write_workdir(workdir, config, params, batch_stats)
    m = config.model
    logging.info("imported %s (%s) into %s: %s classifier, ViT %d wide, depth %d, %d heads, "
                 "patch %d, image %d, %d classes", fv["in"].value, fv.format, workdir,
                 config.task, m.embed_dim, m.depth, m.num_heads, m.patch_size,
                 config.data.image_size, config.num_classes)
    return
  for note in notices:
    logging.info("%s", note)
  imported = export.from_torch_state_dict(sd, fv.format, fv.config, metadata=meta,
                                          image_size=fv.image_size, seed=fv.seed,
                                          source=fv["in"].value)
  _check(imported.config, fv)
  checkpoint.write_workdir(workdir, imported.config, imported.params)
  m = imported.config.model
  video = imported.config.data.get("video")
  clip = (f"{video.num_frames} frames of " if m.get("tubelet_size") else "")
  logging.info("imported %s (%s) into %s: ViT %d wide, depth %d, %d heads, patch %d%s, "
               "%s%dx%d, %s decoder", fv["in"].value, fv.format, workdir, m.embed_dim, m.depth,
               m.num_heads, m.patch_size,
               f", tubelet {m.tubelet_size}" if m.get("tubelet_size") else "", clip,
               imported.config.data.image_size, imported.config.data.image_size,
               "imported" if imported.has_decoder else "fresh")


def _check(config, fv) -> None:
  """The workdir's config (the weights' architecture with --image_size and --config)
  against the schema, before anything is written."""
  from mae_jax import config_schema
  try:
    config_schema.check(config)
  except UserError as e:
    given = f" with --image_size={fv.image_size}" if fv.image_size else ""
    raise UserError(f"the imported model{given} cannot be a workdir: {e}") from None


def _with_architecture(user_config, imported):
  """The user's config (data, optimizer, ...) with the imported model's dimensions."""
  config = user_config.copy_and_resolve_references()
  config.unlock()
  if config.get("task") != imported.task:
    raise UserError(f"--config is a {config.get('task') or 'pretraining'} config; the weights "
                    f"are a {imported.task} classifier.")
  for key in ("embed_dim", "depth", "num_heads", "patch_size", "pool", "mlp_ratio"):
    config.model[key] = imported.model[key]
  config.num_classes = imported.num_classes
  config.data.image_size, config.data.channels = (imported.data.image_size,
                                                  imported.data.channels)
  return config
