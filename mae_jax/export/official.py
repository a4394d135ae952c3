"""facebookresearch/mae ``MaskedAutoencoderViT``: ``{"model": state_dict}`` in a ``.pth``.

Beside ``F.pth`` goes ``F.json`` with the constructor kwargs of the official class
(``MaskedAutoencoderViT(**kwargs, norm_layer=partial(nn.LayerNorm, eps=1e-6))``).
The released checkpoints carry no such file: ``mae_pretrain_vit_*.pth`` is the
encoder only, ``*_full.pth`` / ``mae_visualize_vit_*.pth`` the whole model.

This module also holds the file helpers the other formats share: reading
``.pth`` with ``torch.load(weights_only=True)`` (never arbitrary unpickling) or
``.safetensors``, and writing both, local or ``gs://`` (through
``mae_jax.fileio``). torch is imported only inside them.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from mae_jax import fileio
from mae_jax.errors import CheckpointError, UserError

KWARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
          "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "mlp_ratio",
          "norm_pix_loss")
# Keys of the architecture dicts passed around ``mae_jax.export`` (official names).
ARCH_KEYS = KWARGS + ("mask_ratio",)

INSTALL_HINT = "install the PyTorch extra: pip install 'mae_jax[torch]'"


def check_expressible(config) -> None:
  """The official ``MaskedAutoencoderViT`` takes one ``img_size`` (square images)."""
  size = config.data.image_size
  if isinstance(size, (tuple, list)) and size[0] != size[1]:
    raise CheckpointError(
        f"cannot export to --format=official: data.image_size=({size[0]}, {size[1]}) is not "
        "square and the official models_mae.py takes one img_size; use --format=timm "
        "(takes (height, width)).")


def metadata(config) -> dict:
  """Constructor kwargs of the official ``MaskedAutoencoderViT`` for ``config``."""
  m = config.model
  return dict(img_size=int(config.data.image_size), patch_size=int(m.patch_size),
              in_chans=int(config.data.channels), embed_dim=int(m.embed_dim),
              depth=int(m.depth), num_heads=int(m.num_heads),
              decoder_embed_dim=int(m.decoder_embed_dim), decoder_depth=int(m.decoder_depth),
              decoder_num_heads=int(m.decoder_num_heads), mlp_ratio=float(m.mlp_ratio),
              norm_pix_loss=bool(m.norm_pix_loss))


def arch_from_metadata(meta: Mapping[str, Any]) -> tuple[dict, list[str]]:
  """Architecture dict (official kwarg names) from an ``F.json``."""
  if "kwargs" in meta and isinstance(meta["kwargs"], Mapping):  # a timm sidecar
    meta = meta["kwargs"]
  return {k: meta[k] for k in ARCH_KEYS if k in meta}, []


def write(state_dict: Mapping[str, np.ndarray], meta: dict, out: str) -> list[str]:
  """``out`` (``.pth``: ``{"model": sd}``; ``.safetensors``: the flat dict) + ``.json``."""
  if out.endswith(".safetensors"):
    save_safetensors(state_dict, out)
  else:
    save_pth({"model": dict(state_dict)}, out)
  side = sidecar_path(out)
  write_json(meta, side)
  return [out, side]


def read(path: str) -> tuple[dict, dict | None, list[str]]:
  """(state dict as float32 NumPy, sidecar JSON or None, notices)."""
  notices = []
  sd, unwrap_note = unwrap(load_tensors(path), path)
  if unwrap_note:
    notices.append(unwrap_note)
  meta = read_sidecar(path)
  if meta is None and os.path.basename(path).startswith("mae_visualize"):
    # The official visualisation checkpoints were trained on plain pixels.
    meta = {"norm_pix_loss": False}
    notices.append(f"{os.path.basename(path)}: a visualisation checkpoint, trained without "
                   "norm_pix_loss; model.norm_pix_loss=False.")
  return sd, meta, notices


# ------------------------------------------------------------------ file helpers


def sidecar_path(path: str) -> str:
  """``F.pth`` -> ``F.json``."""
  root, ext = os.path.splitext(path)
  return (root if ext else path) + ".json"


def read_sidecar(path: str) -> dict | None:
  side = sidecar_path(path)
  if fileio.same(side, path) or not fileio.isfile(side):
    return None
  try:
    meta = json.loads(fileio.read_text(side))
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{side} cannot be read as JSON ({e}).") from None
  if not isinstance(meta, dict):
    raise CheckpointError(f"{side} must hold a JSON object.")
  return meta


def write_json(obj: dict, path: str) -> None:
  fileio.write_json(path, obj, indent=2, sort_keys=True)


def _torch():
  try:
    import torch
  except ImportError:
    raise UserError(f"reading or writing .pth files needs PyTorch; {INSTALL_HINT}.") from None
  return torch


def save_pth(obj: Any, path: str) -> None:
  """``torch.save`` of ``obj`` with every NumPy array turned into a CPU tensor."""
  torch = _torch()

  def convert(x):
    if isinstance(x, np.ndarray):
      return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, Mapping):
      return {k: convert(v) for k, v in x.items()}
    return x

  buffer = io.BytesIO()
  torch.save(convert(obj), buffer)
  fileio.write_bytes(path, buffer.getvalue())


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  try:
    from safetensors.numpy import save
  except ImportError:
    raise UserError(f"writing .safetensors needs the safetensors package; {INSTALL_HINT}.") \
        from None
  fileio.write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in state_dict.items()},
                                metadata={"format": "pt"}))


def load_tensors(path: str) -> Any:
  """The object stored in ``path``: ``.safetensors`` or a ``torch.save`` file.

  ``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``: tensors,
  containers, numbers and strings only (plus ``argparse.Namespace``, which the
  official training checkpoints carry as ``args``). A file holding any other
  pickled object -- a function, a class, a callable -- is refused.
  """
  if not fileio.exists(path):
    raise CheckpointError(f"{path} does not exist.")
  if fileio.isdir(path):
    raise CheckpointError(f"{path} is a directory; pass the weights file.")
  if path.endswith(".safetensors"):
    return _load_safetensors(path)
  torch = _torch()
  import argparse
  import pickle
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      with fileio.open(path, "rb") as f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found or re.search(r"unrecognized function|Can only (create new object|build)", text):
      what = found.group(1) if found else "an object that is not a tensor"
      raise CheckpointError(
          f"{path} contains a pickled Python object ({what}), not only tensors; refusing to "
          "unpickle it, since loading it could run arbitrary code. Re-save just the state "
          "dict (torch.save({'model': model.state_dict()}, ...)) or use safetensors.") from None
    raise _unreadable(path, _torch_reason(text)) from None
  except Exception as e:  # torch raises KeyError, RuntimeError, EOFError... for junk
    reason = "" if isinstance(e, KeyError) else (  # a KeyError names a stray byte
        _torch_reason(str(e)) or type(e).__name__)
    raise _unreadable(path, reason) from None
  return obj


def _torch_reason(text: str) -> str:
  """torch's own reason, without its advice to load with ``weights_only=False`` (which
  would run any code the file holds: the one thing this reader refuses to do)."""
  inner = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
  if inner:
    return inner.group(1).strip()[:200]
  lines = [l.strip() for l in text.splitlines()
           if l.strip() and "weights_only" not in l and "Weights only load failed" not in l]
  return lines[0][:200] if lines else ""


def _unreadable(path: str, reason: str) -> CheckpointError:
  return CheckpointError(
      f"{path} cannot be read as a PyTorch checkpoint{f' ({reason})' if reason else ''}; it "
      "is truncated, corrupt or not a torch.save file of tensors. (Files are read as tensors "
      "only; pickled code is refused.)")


def _load_safetensors(path: str) -> dict:
  try:
    from safetensors import numpy as st_numpy
  except ImportError:
    raise UserError(f"reading .safetensors needs the safetensors package; {INSTALL_HINT}.") \
        from None
  data = fileio.read_bytes(path)
  try:
    try:
      return st_numpy.load(data)
    except (KeyError, TypeError, ValueError):  # e.g. bfloat16, which NumPy lacks: use torch
      pass
    _torch()
    from safetensors import torch as st_torch
    return st_torch.load(data)
  except UserError:
    raise
  except Exception as e:  # safetensors raises its own error types for bad headers
    raise CheckpointError(f"{path} cannot be read as safetensors ({e}).") from None


def is_tensor(x) -> bool:
  return isinstance(x, np.ndarray) or (hasattr(x, "detach") and hasattr(x, "shape"))


def to_numpy(x) -> np.ndarray:
  """A NumPy copy of a tensor/array; floating point as float32."""
  if hasattr(x, "detach"):  # a torch tensor (torch is already imported if we hold one)
    x = x.detach().cpu()
    if x.is_floating_point():
      x = x.float()
    x = x.numpy()
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
    x = x.astype(np.float32)
  elif x.dtype.kind == "V":  # ml_dtypes types such as bfloat16
    x = x.astype(np.float32)
  return x


def unwrap(obj: Any, source: str = "the state dict") -> tuple[dict, str | None]:
  """The flat ``{name: array}`` inside a checkpoint object, and a note if unwrapped.

  Accepts a plain state dict, ``{"model": sd}`` (official), ``{"state_dict": sd}``
  (timm training checkpoints) and strips a DistributedDataParallel ``module.``
  prefix.
  """
  note = None
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict.")
  if not any(is_tensor(v) for v in obj.values()):
    for key in ("model", "state_dict", "model_state_dict", "module"):
      if isinstance(obj.get(key), Mapping):
        others = sorted(k for k in obj if k != key)
        if others:
          note = (f"{os.path.basename(str(source))}: using its {key!r} entry "
                  f"(ignoring {', '.join(map(str, others))}).")
        obj = obj[key]
        break
  not_tensors = [k for k, v in obj.items() if not is_tensor(v)]
  if not_tensors:
    raise CheckpointError(
        f"{source} is not a state dict of tensors: {', '.join(map(str, not_tensors[:8]))} "
        f"{'are' if len(not_tensors) > 1 else 'is'} not tensors.")
  sd = {str(k): to_numpy(v) for k, v in obj.items()}
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd, note


def log_notices(notices) -> None:
  for n in notices:
    logging.info("%s", n)
