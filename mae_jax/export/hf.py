"""Hugging Face ``ViTMAEForPreTraining``: a directory with ``config.json`` and
``model.safetensors`` (the Hub key names, as ``facebook/vit-mae-base``)::

    model = transformers.ViTMAEForPreTraining.from_pretrained(DIR)

``config.json`` sets ``layer_norm_eps=1e-6`` (MAE's value; ``ViTMAEConfig``
defaults to 1e-12, and the Hub configs of the released models say 1e-12 too),
``hidden_act="gelu"`` (exact erf GELU) and ``qkv_bias=True``. Writing needs only
the ``safetensors`` package, not torch.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from mae_jax import fileio
from mae_jax.errors import CheckpointError
from mae_jax.export import official
from mae_jax.sizes import image_hw

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def transformer_config(config) -> dict:
  """The ``config.json`` keys Hugging Face's ViTMAE and VideoMAE share."""
  m = config.model
  return {
      "hidden_size": int(m.embed_dim),
      "num_hidden_layers": int(m.depth),
      "num_attention_heads": int(m.num_heads),
      "intermediate_size": int(m.embed_dim * m.mlp_ratio),
      "hidden_act": "gelu",
      "hidden_dropout_prob": 0.0,
      "attention_probs_dropout_prob": 0.0,
      "initializer_range": 0.02,
      "layer_norm_eps": 1e-6,
      "image_size": _hf_size(config.data.image_size),
      "patch_size": int(m.patch_size),
      "num_channels": int(config.data.channels),
      "qkv_bias": True,
      "decoder_num_attention_heads": int(m.decoder_num_heads),
      "decoder_hidden_size": int(m.decoder_embed_dim),
      "decoder_num_hidden_layers": int(m.decoder_depth),
      "decoder_intermediate_size": int(m.decoder_embed_dim * m.mlp_ratio),
      "norm_pix_loss": bool(m.norm_pix_loss),
  }


def check_expressible(config) -> None:
  """``ViTMAEForPreTraining`` builds its sin-cos tables for a square grid
  (``int(num_patches ** 0.5)``): rectangular images cannot load."""
  size = config.data.image_size
  if isinstance(size, (tuple, list)) and size[0] != size[1]:
    raise CheckpointError(
        f"cannot export to --format=hf: data.image_size=({size[0]}, {size[1]}) is not square "
        "and Hugging Face's ViTMAE builds its position tables for a square patch grid; use "
        "--format=timm (takes (height, width)).")


def _hf_size(size):
  h, w = image_hw(size)
  return h if h == w else [h, w]


def metadata(config) -> dict:
  return {
      "architectures": ["ViTMAEForPreTraining"],
      "model_type": "vit_mae",
      **transformer_config(config),
      "mask_ratio": float(config.model.mask_ratio),
      "preprocessor": preprocessor(config),
  }


def preprocessor(config) -> dict:
  """``preprocessor_config.json``: ``AutoImageProcessor`` gets size, mean and std."""
  from mae_jax.export.timm import mean_std
  (h, w), channels = image_hw(config.data.image_size), int(config.data.channels)
  mean, std = mean_std(config)
  return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
          "size": {"height": h, "width": w}, "resample": 3, "do_rescale": True,
          "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean,
          "image_std": std, "do_convert_rgb": channels == 3}


def _square(value, what: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise CheckpointError(f"config.json {what}={list(value)} is not square; mae_jax "
                            "models use square images and patches.")
    value = value[0]
  return int(value)


def arch_from_metadata(meta: Mapping[str, Any], model_type: str = "vit_mae",
                       family: str = "MAE") -> tuple[dict, list[str]]:
  """Architecture dict (official names) from a ``ViTMAEConfig`` JSON (or, with
  ``model_type="videomae"``, the keys a ``VideoMAEConfig`` shares with it)."""
  notices = []
  if meta.get("model_type", model_type) != model_type:
    raise CheckpointError(f"config.json has model_type={meta.get('model_type')!r}, not "
                          f"{model_type!r}.")
  if not meta.get("qkv_bias", True):
    raise CheckpointError("config.json has qkv_bias=false; MAE's attention has a qkv bias.")
  act = meta.get("hidden_act", "gelu")
  if act != "gelu":
    raise CheckpointError(f"config.json has hidden_act={act!r}; MAE uses the exact 'gelu'.")
  eps = meta.get("layer_norm_eps", 1e-12)
  if abs(float(eps) - 1e-6) > 1e-12:
    notices.append(f"config.json says layer_norm_eps={eps}; {family} weights are trained "
                   "with 1e-6, which mae_jax uses.")
  arch = {}
  pairs = (("hidden_size", "embed_dim"), ("num_hidden_layers", "depth"),
           ("num_attention_heads", "num_heads"), ("num_channels", "in_chans"),
           ("decoder_hidden_size", "decoder_embed_dim"),
           ("decoder_num_hidden_layers", "decoder_depth"),
           ("decoder_num_attention_heads", "decoder_num_heads"),
           ("mask_ratio", "mask_ratio"), ("norm_pix_loss", "norm_pix_loss"))
  for theirs, ours in pairs:
    if theirs in meta:
      arch[ours] = meta[theirs]
  if "image_size" in meta:
    arch["img_size"] = _square(meta["image_size"], "image_size")
  if "patch_size" in meta:
    arch["patch_size"] = _square(meta["patch_size"], "patch_size")
  if "intermediate_size" in meta and "hidden_size" in meta:
    arch["mlp_ratio"] = meta["intermediate_size"] / meta["hidden_size"]
    if "decoder_intermediate_size" in meta and "decoder_hidden_size" in meta:
      ratio = meta["decoder_intermediate_size"] / meta["decoder_hidden_size"]
      if abs(ratio - arch["mlp_ratio"]) > 1e-9:
        raise CheckpointError(
            f"config.json has MLP ratio {arch['mlp_ratio']:g} in the encoder and {ratio:g} in "
            "the decoder; mae_jax models share one mlp_ratio.")
  return arch, notices


def write(state_dict: Mapping[str, np.ndarray], meta: dict, out: str) -> list[str]:
  if fileio.isfile(out):
    raise CheckpointError(f"{out} is a file; --format=hf and --format=videomae write a directory.")
  fileio.makedirs(out)
  weights = fileio.join(out, WEIGHTS[0])
  official.save_safetensors(state_dict, weights)
  meta = dict(meta)
  written = []
  if "preprocessor" in meta:
    processor = fileio.join(out, PROCESSOR)
    official.write_json(meta.pop("preprocessor"), processor)
    written.append(processor)
  config = fileio.join(out, CONFIG)
  official.write_json(meta, config)
  return [config, weights] + written


def read(path: str) -> tuple[dict, dict | None, list[str]]:
  """A ``from_pretrained`` directory, or a weights file (``config.json`` beside it)."""
  if fileio.isdir(path):
    directory, files = path, None
    for name in INDEX:
      index = fileio.join(path, name)
      if fileio.isfile(index):
        files = sorted(set(json.loads(fileio.read_text(index))["weight_map"].values()))
        break
    if files is None:
      files = [name for name in WEIGHTS if fileio.isfile(fileio.join(path, name))][:1]
    if not files:
      raise CheckpointError(f"{path} has none of {', '.join(WEIGHTS + INDEX)}; not a Hugging "
                            "Face model directory.")
    paths = [fileio.join(path, name) for name in files]
  else:
    directory, paths = fileio.dirname(path), [path]
  sd, notices = {}, []
  for p in paths:
    part, note = official.unwrap(official.load_tensors(p), p)
    sd.update(part)
    if note:
      notices.append(note)
  meta = None
  config = fileio.join(directory or ".", CONFIG)
  if fileio.isfile(config):
    try:
      meta = json.loads(fileio.read_text(config))
    except (OSError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{config} cannot be read as JSON ({e}).") from None
  return sd, meta, notices
