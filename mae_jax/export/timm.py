"""timm ``VisionTransformer``: the MAE encoder as a plain state dict.

``F.pth`` (or ``F.safetensors``) holds the state dict; ``F.json`` holds
``{"model_name": ..., "kwargs": {...}}`` such that::

    model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"])
    model.load_state_dict(torch.load("F.pth"), strict=True)

``num_classes=0`` (no head) and ``global_pool="token"`` (the final ``norm`` kept):
``model.forward_features(x)`` equals mae_jax's ``model.features`` on all tokens.
``pos_embed`` is ``[1, 1 + L, D]`` with the (zero) cls row.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mae_jax.export import official

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
  name = f"vit_{size}_patch{config.model.patch_size}_{config.data.image_size}"
  return name if name in _REGISTERED else _FALLBACK


def metadata(config) -> dict:
  m = config.model
  kwargs = dict(img_size=int(config.data.image_size), patch_size=int(m.patch_size),
                in_chans=int(config.data.channels), embed_dim=int(m.embed_dim),
                depth=int(m.depth), num_heads=int(m.num_heads), mlp_ratio=float(m.mlp_ratio),
                qkv_bias=True, class_token=True, global_pool="token", num_classes=0)
  return {"model_name": model_name(config), "kwargs": kwargs}


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
  if out.endswith(".safetensors"):
    official.save_safetensors(state_dict, out)
  else:
    official.save_pth(dict(state_dict), out)
  side = official.sidecar_path(out)
  official.write_json(meta, side)
  return [out, side]


def read(path: str) -> tuple[dict, dict | None, list[str]]:
  sd, note = official.unwrap(official.load_tensors(path), path)
  return sd, official.read_sidecar(path), [note] if note else []
