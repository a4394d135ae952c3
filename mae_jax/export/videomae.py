"""Hugging Face ``VideoMAEForPreTraining``: a directory with ``config.json`` and
``model.safetensors``::

    model = transformers.VideoMAEForPreTraining.from_pretrained(DIR)

VideoMAE fixes five things our video model leaves open; a model is exportable
when its config chose them as VideoMAE does (``config_lib.videomae_layout``, the
``hf_layout`` option of ``configs/pretrain_video_fmnist.py``): no cls token, the
1-D sinusoid table over the flat token index, no bias in ``encoder_to_decoder``,
targets normalised per channel, and eps 1e-5 in the decoder's final LayerNorm
(``nn.LayerNorm``'s default). It also uses ``use_mean_pooling=False`` so that the
encoder ends with our ``norm``. Its loss un-normalises frames with the ImageNet
mean/std, so it is defined for RGB clips only; the weights and predictions are the
same for any channel count.

Import reads the same directory (``config.json`` is required: unlike the image
formats, VideoMAE's architecture is not visible in the tensor shapes) and refuses,
with one line each, the ``VideoMAEConfig`` choices our model cannot compute
(``REFUSED``).
"""
from __future__ import annotations

from typing import Any, Mapping

from mae_jax.errors import CheckpointError, ConfigError
from mae_jax.export import hf

read = hf.read
write = hf.write

# Our config key, the value VideoMAE's layout needs, and what it means.
REQUIRED = (
    ("use_cls_token", False, "VideoMAE has no cls token"),
    ("pos_table", "sinusoid_1d", "VideoMAE's position table is a 1-D sinusoid"),
    ("decoder_embed_bias", False, "VideoMAE's encoder_to_decoder has no bias"),
    ("decoder_norm_eps", 1e-5, "VideoMAE's decoder LayerNorm has PyTorch's default eps"),
)

# VideoMAEConfig keys (with the default of transformers' VideoMAEConfig), the value
# our model needs, and why another value cannot be expressed.
REFUSED = (
    ("use_mean_pooling", True, False,
     "VideoMAEForPreTraining then has no final encoder LayerNorm, which mae_jax's "
     "encoder always ends with"),
    ("qv_bias", True, True, "mae_jax's attention has query and value biases"),
    ("hidden_act", "gelu", "gelu", "mae_jax's MLP uses the exact (erf) GELU"),
    ("norm_pix_loss", True, True,
     "without it VideoMAE's target is the frames un-normalised with the ImageNet "
     "statistics, which mae_jax's loss does not compute"),
)

# What VideoMAE pretrains with: tube masking at 90%.
MASK_RATIO = 0.9


def check_expressible(config) -> None:
  """One line naming what a ``VideoMAEForPreTraining`` cannot express."""
  m = config.model
  if not int(m.get("tubelet_size", 0)):
    raise CheckpointError("--format=videomae exports video models (model.tubelet_size > 0); "
                          "use --format=hf for an image model.")
  for key, value, why in REQUIRED:
    if m.get(key) != value:
      raise CheckpointError(f"cannot export to VideoMAE: model.{key}={m.get(key)!r} but {why} "
                            f"(train with model.{key}={value!r}, e.g. the hf_layout option "
                            "of configs/pretrain_video_fmnist.py).")


def metadata(config) -> dict:
  return {
      "architectures": ["VideoMAEForPreTraining"],
      "model_type": "videomae",
      **hf.transformer_config(config),
      "num_frames": int(config.data.video.num_frames),
      "tubelet_size": int(config.model.tubelet_size),
      "use_mean_pooling": False,
  }


def config_from_metadata(meta: Mapping[str, Any] | None, source: str
                         ) -> tuple[Any, list[str]]:
  """A full pretraining config (video, VideoMAE's layout) from a ``VideoMAEConfig``
  JSON, and notices. Raises a ``CheckpointError`` for what mae_jax cannot express."""
  from mae_jax import config_lib
  from mae_jax.models import masking, registry
  if meta is None:
    raise CheckpointError(f"{source} has no config.json; a VideoMAE model's frames, tubelet "
                          "and head counts are not visible in its weights. Import the "
                          "directory save_pretrained wrote.")
  model_type = meta.get("model_type")
  if model_type != "videomae":
    hint = " (a ViTMAE model: pass --format=hf)" if model_type == "vit_mae" else ""
    raise CheckpointError(f"config.json in {source} has model_type={model_type!r}, not "
                          f"'videomae'{hint}.")
  for key, default, needed, why in REFUSED:
    if meta.get(key, default) != needed:
      raise CheckpointError(f"cannot import {source}: config.json has {key}="
                            f"{meta.get(key, default)!r}, but {why}.")
  arch, notices = hf.arch_from_metadata(meta, model_type="videomae", family="VideoMAE")
  dropout = {k: meta.get(k, 0.0) for k in ("hidden_dropout_prob",
                                            "attention_probs_dropout_prob")}
  if any(dropout.values()):
    notices.append(f"config.json sets {dropout}; mae_jax pretrains without dropout.")
  frames, tubelet = int(meta.get("num_frames", 16)), int(meta.get("tubelet_size", 2))
  c = config_lib.pretrain_defaults("B/16")
  config_lib.video_defaults(c, tubelet_size=tubelet, num_frames=frames)
  config_lib.videomae_layout(c)
  m = c.model
  m.update(embed_dim=int(arch.get("embed_dim", 768)), depth=int(arch.get("depth", 12)),
           num_heads=int(arch.get("num_heads", 12)),
           patch_size=int(arch.get("patch_size", 16)),
           mlp_ratio=float(arch.get("mlp_ratio", 4.0)),
           decoder_embed_dim=int(arch.get("decoder_embed_dim", 384)),
           decoder_depth=int(arch.get("decoder_depth", 4)),
           decoder_num_heads=int(arch.get("decoder_num_heads", 6)),
           norm_pix_loss=True, mask_ratio=MASK_RATIO)
  m.name = f"videomae/{tubelet}x{m.patch_size}"
  c.data.update(image_size=int(arch.get("img_size", 224)),
                channels=int(arch.get("in_chans", 3)))
  grid = registry.patch_grid(c)
  try:  # VideoMAE's recipe; a grid too small to keep a whole tube masks at random
    masking.check_strategy("tube", MASK_RATIO, grid)
    m.masking = "tube"
  except ConfigError:
    notices.append(f"a {grid[1]}x{grid[2]} patch grid keeps no tube at mask ratio "
                   f"{MASK_RATIO}; using random spacetime masking.")
  return c, notices
