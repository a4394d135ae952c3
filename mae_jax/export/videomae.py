"""Hugging Face ``VideoMAEForPreTraining``: a directory with ``config.json`` and
``model.safetensors``::

    model = transformers.VideoMAEForPreTraining.from_pretrained(DIR)

VideoMAE fixes five things our video model leaves open; a model is exportable
when its config chose them as VideoMAE does (``configs/pretrain_video_fmnist.py``
with ``hf_layout``): no cls token, the 1-D sinusoid table over the flat token
index, no bias in ``encoder_to_decoder``, targets normalised per channel, and
eps 1e-5 in the decoder's final LayerNorm (``nn.LayerNorm``'s default). It also
uses ``use_mean_pooling=False`` so that the encoder ends with our ``norm``. Its
loss un-normalises frames with the ImageNet mean/std, so it is defined for RGB
clips only; the weights and predictions are the same for any channel count.
"""
from __future__ import annotations

from mae_jax.errors import CheckpointError
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
