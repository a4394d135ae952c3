"""timm ``VisionTransformer``: the MAE encoder as a timm model.

``--out=DIR`` (no file suffix) writes the folder timm loads natively::

    model = timm.create_model("local-dir:DIR", pretrained=True)

(``config.json``: architecture, ``model_args``, ``pretrained_cfg`` with the
dataset's mean/std and input size; ``model.safetensors``). ``--out=F.pth`` (or
``F.safetensors``) writes the state dict and ``F.json`` with
``{"model_name": ..., "kwargs": {...}}`` such that::

    model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"])
    model.load_state_dict(torch.load("F.pth"), strict=True)

Both are read back by ``mae-jax import --format=timm``.

``num_classes=0`` (no head) and ``global_pool="token"`` (the final ``norm`` kept):
``model.forward_features(x)`` equals mae_jax's ``model.features`` on all tokens.
``pos_embed`` is ``[1, 1 + L, D]`` with the (zero) cls row.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mae_jax.export import official
from mae_jax.sizes import image_hw

# Registered timm names; the kwargs override every dimension, so the name only
# picks the closest family (and its pretrained_cfg metadata).
_WIDTH_NAMES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}
_REGISTERED = frozenset({
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
    "vit_large_patch16_224", "vit_huge_patch14_224", "vit_small_patch8_224",
    "vit_base_patch8_224", "vit_small_patch32_224", "vit_base_patch32_224",
    "vit_large_patch32_224", "vit_tiny_patch16_384", "vit_small_patch16_384",
    "vit_base_patch16_384", "vit_large_patch16_384",
})
_FALLBACK = "vit_base_patch16_224"


def model_name(config) -> str:
  size = _WIDTH_NAMES.get(int(config.model.embed_dim))
  name = f"vit_{size}_patch{config.model.patch_size}_{config.data.image_size}"  # square only
  return name if name in _REGISTERED else _FALLBACK


LOCAL_CONFIG = "config.json"
LOCAL_WEIGHTS = "model.safetensors"


def mean_std(config) -> tuple[list[float], list[float]]:
  """The normalisation the model was trained with (the dataset's unless set)."""
  import logging
  from mae_jax.errors import UserError
  try:
    from mae_jax.data import pipeline
    mean, std = pipeline.normalization(config.data)
  except (UserError, ImportError) as e:
    from mae_jax.data.stats import IMAGENET_MEAN, IMAGENET_STD
    logging.warning("the dataset's mean/std are not available (%s); writing ImageNet's.", e)
    mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if int(config.data.channels) == 3
                 else ((0.5,), (0.5,)))
  return [float(v) for v in mean], [float(v) for v in std]


def pretrained_cfg(config, num_classes: int) -> dict:
  """timm's ``pretrained_cfg``: what ``resolve_data_config`` hands a PyTorch user."""
  (h, w), channels = image_hw(config.data.image_size), int(config.data.channels)
  mean, std = mean_std(config)
  return {"input_size": [channels, h, w], "fixed_input_size": True,
          "interpolation": "bicubic", "crop_pct": float(config.data.get("eval_crop_pct", 0.875)),
          "crop_mode": "center", "mean": mean, "std": std, "num_classes": int(num_classes),
          "first_conv": "patch_embed.proj", "classifier": "head"}


def metadata(config) -> dict:
  m = config.model
  h, w = image_hw(config.data.image_size)
  # timm's VisionTransformer takes img_size as an int or (height, width)
  kwargs = dict(img_size=h if h == w else [h, w], patch_size=int(m.patch_size),
                in_chans=int(config.data.channels), embed_dim=int(m.embed_dim),
                depth=int(m.depth), num_heads=int(m.num_heads), mlp_ratio=float(m.mlp_ratio),
                qkv_bias=True, class_token=True, global_pool="token", num_classes=0)
  return {"model_name": model_name(config), "kwargs": kwargs,
          "pretrained_cfg": pretrained_cfg(config, 0)}


def is_local_dir(out: str) -> bool:
  return not out.endswith((".pth", ".safetensors", ".bin", ".pt"))


def write_local_dir(state_dict: Mapping[str, np.ndarray], meta: dict, out: str) -> list[str]:
  """The folder ``timm.create_model("local-dir:out", pretrained=True)`` loads."""
  from mae_jax import fileio
  kwargs = meta["kwargs"]
  if fileio.isfile(out):
    from mae_jax.errors import UserError
    raise UserError(f"{out} is a file; a timm folder export needs a directory path.")
  fileio.makedirs(out)
  local = {"architecture": meta["model_name"], "num_classes": kwargs["num_classes"],
           "num_features": kwargs["embed_dim"], "global_pool": kwargs["global_pool"],
           "model_args": kwargs, "pretrained_cfg": meta["pretrained_cfg"]}
  weights, config = fileio.join(out, LOCAL_WEIGHTS), fileio.join(out, LOCAL_CONFIG)
  official.save_safetensors(state_dict, weights)
  official.write_json(local, config)
  return [config, weights]


def arch_from_metadata(meta: Mapping[str, Any]) -> tuple[dict, list[str]]:
  kwargs = meta.get("kwargs", meta)
  if not isinstance(kwargs, Mapping):
    return {}, []
  from mae_jax.errors import CheckpointError
  for key, want in (("qkv_bias", True), ("class_token", True), ("no_embed_class", False)):
    if key in kwargs and bool(kwargs[key]) != want:
      raise CheckpointError(f"the timm model has {key}={kwargs[key]}; an MAE encoder needs "
                            f"{key}={want}.")
  return {k: kwargs[k] for k in official.ARCH_KEYS if k in kwargs}, []


def write(state_dict: Mapping[str, np.ndarray], meta: dict, out: str) -> list[str]:
  if is_local_dir(out):
    return write_local_dir(state_dict, meta, out)
  if out.endswith(".safetensors"):
    official.save_safetensors(state_dict, out)
  else:
    official.save_pth(dict(state_dict), out)
  side = official.sidecar_path(out)
  official.write_json(meta, side)
  return [out, side]


def read(path: str) -> tuple[dict, dict | None, list[str]]:
  """``F.pth`` / ``F.safetensors`` (+ ``F.json``), or a ``local-dir`` folder."""
  import json
  from mae_jax import fileio
  if fileio.isdir(path):
    config = fileio.join(path, LOCAL_CONFIG)
    try:
      local = json.loads(fileio.read_text(config))
    except (OSError, json.JSONDecodeError) as e:
      from mae_jax.errors import CheckpointError
      raise CheckpointError(f"{config} cannot be read as a timm folder config ({e}).") from None
    sd, note = official.unwrap(official.load_tensors(fileio.join(path, LOCAL_WEIGHTS)), path)
    meta = {"model_name": local.get("architecture"), "kwargs": local.get("model_args", {})}
    return sd, meta, [note] if note else []
  sd, note = official.unwrap(official.load_tensors(path), path)
  return sd, official.read_sidecar(path), [note] if note else []
