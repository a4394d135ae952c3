"""The one name map between our parameter tree and the PyTorch layouts.

Every converter in ``mae_jax.export`` goes through this table: a list of
``Entry(torch name, our path, layout kind)`` per format. The layout kind says how
one tensor becomes the other (a transpose, a head split, ...); ``to_torch`` and
``from_torch`` apply it. Nothing else in the package spells a PyTorch key.

Formats:

* ``official`` -- facebookresearch/mae ``MaskedAutoencoderViT``.
* ``timm`` -- timm ``VisionTransformer`` (the official encoder names; no decoder).
* ``hf`` -- Hugging Face ``ViTMAEForPreTraining`` as stored on the Hub
  (``vit.encoder.layer.N.attention.attention.query`` ...; separate q/k/v).
* ``videomae`` -- Hugging Face ``VideoMAEForPreTraining`` (a video model of ours:
  ``patch_embed/proj/kernel [t, p, p, C, D]``, no cls token, no key bias: a bias
  on the keys adds the same number to every logit of a query, so dropping it
  leaves the attention unchanged).

Our tree (``flax.linen.unbox(variables["params"])``): ``patch_embed/proj/kernel``
``[p, p, C, D]``, ``cls_token [1, 1, D]``, ``blocks_N/{norm1, norm2}/{scale, bias}``,
``blocks_N/attn/qkv/kernel [D, 3, H, hd]`` (bias ``[3, H, hd]``),
``blocks_N/attn/proj/kernel [H, hd, D]``, ``blocks_N/mlp/{fc1, fc2}/kernel [in, out]``,
``norm``, ``decoder_embed``, ``mask_token``, ``decoder_blocks_N/...``,
``decoder_norm``, ``decoder_pred``. Position tables are fixed sin-cos constants,
not parameters; the PyTorch layouts store them, so they appear here as ``POS``
entries with no path of ours.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np

# ----------------------------------------------------------------- layout kinds
SAME = "same"            # identical tensor (norms, biases, tokens)
LINEAR = "linear"        # kernel [in, out]      <-> nn.Linear weight [out, in]
CONV = "conv"            # kernel [p, p, C, D]   <-> nn.Conv2d weight [D, C, p, p]
CONV3D = "conv3d"        # kernel [t, p, p, C, D] <-> nn.Conv3d weight [D, C, t, p, p]
QKV = "qkv"              # kernel [D, 3, H, hd]  <-> fused qkv weight [3*H*hd, D]
QKV_BIAS = "qkv_bias"    # bias [3, H, hd]       <-> [3*H*hd]
ATTN_OUT = "attn_out"    # kernel [H, hd, D]     <-> weight [D, H*hd]
QKV_PART = "qkv_part"    # kernel[:, part]       <-> HF query/key/value weight [H*hd, D]
QKV_BIAS_PART = "qkv_bias_part"  # bias[part]    <-> HF query/key/value bias [H*hd]
POS = "pos"              # fixed position table [1, 1 + L, D]; no parameter of ours

FORMATS = ("official", "timm", "hf", "videomae")


@dataclasses.dataclass(frozen=True)
class Entry:
  torch: str                          # key in the PyTorch state dict
  ours: tuple[str, ...] | None        # path in our params tree (None: position table)
  kind: str
  part: int | None = None             # q/k/v index for QKV_PART / QKV_BIAS_PART
  table: str | None = None            # "encoder" / "decoder" for POS entries


def _rows(*rows):
  """``(our path 'a/b/c', torch suffix, kind[, part])`` tuples."""
  return tuple(rows)


# A transformer block, relative to its prefix (our ``blocks_N`` / theirs).
_BLOCK_OFFICIAL = _rows(
    ("norm1/scale", "norm1.weight", SAME), ("norm1/bias", "norm1.bias", SAME),
    ("attn/qkv/kernel", "attn.qkv.weight", QKV), ("attn/qkv/bias", "attn.qkv.bias", QKV_BIAS),
    ("attn/proj/kernel", "attn.proj.weight", ATTN_OUT),
    ("attn/proj/bias", "attn.proj.bias", SAME),
    ("norm2/scale", "norm2.weight", SAME), ("norm2/bias", "norm2.bias", SAME),
    ("mlp/fc1/kernel", "mlp.fc1.weight", LINEAR), ("mlp/fc1/bias", "mlp.fc1.bias", SAME),
    ("mlp/fc2/kernel", "mlp.fc2.weight", LINEAR), ("mlp/fc2/bias", "mlp.fc2.bias", SAME),
)

_BLOCK_HF = _rows(
    ("norm1/scale", "layernorm_before.weight", SAME),
    ("norm1/bias", "layernorm_before.bias", SAME),
    ("attn/qkv/kernel", "attention.attention.query.weight", QKV_PART, 0),
    ("attn/qkv/kernel", "attention.attention.key.weight", QKV_PART, 1),
    ("attn/qkv/kernel", "attention.attention.value.weight", QKV_PART, 2),
    ("attn/qkv/bias", "attention.attention.query.bias", QKV_BIAS_PART, 0),
    ("attn/qkv/bias", "attention.attention.key.bias", QKV_BIAS_PART, 1),
    ("attn/qkv/bias", "attention.attention.value.bias", QKV_BIAS_PART, 2),
    ("attn/proj/kernel", "attention.output.dense.weight", ATTN_OUT),
    ("attn/proj/bias", "attention.output.dense.bias", SAME),
    ("norm2/scale", "layernorm_after.weight", SAME),
    ("norm2/bias", "layernorm_after.bias", SAME),
    ("mlp/fc1/kernel", "intermediate.dense.weight", LINEAR),
    ("mlp/fc1/bias", "intermediate.dense.bias", SAME),
    ("mlp/fc2/kernel", "output.dense.weight", LINEAR),
    ("mlp/fc2/bias", "output.dense.bias", SAME),
)


# VideoMAE's attention has q and v biases only (``qv_bias``).
_BLOCK_VIDEOMAE = tuple(row for row in _BLOCK_HF
                        if row[1] != "attention.attention.key.bias")


@dataclasses.dataclass(frozen=True)
class Layout:
  """One PyTorch format: top-level names, block names and block prefixes."""
  encoder: tuple            # rows outside the blocks, encoder side
  decoder: tuple | None     # rows outside the blocks, decoder side (None: no decoder)
  block: tuple              # rows inside a block
  block_prefix: str         # "blocks.{}." -- formatted with the block index
  decoder_block_prefix: str | None

  def torch_name(self, ours: str) -> str:
    """The PyTorch key of a top-level path of ours, e.g. ``cls_token``."""
    for row in self.encoder + (self.decoder or ()):
      if row[0] == ours:
        return row[1]
    raise KeyError(ours)

  def block_name(self, index: int, ours: str, decoder: bool = False) -> str:
    prefix = self.decoder_block_prefix if decoder else self.block_prefix
    for row in self.block:
      if row[0] == ours:
        return prefix.format(index) + row[1]
    raise KeyError(ours)

  def block_indices(self, keys, decoder: bool = False) -> list[int]:
    """Block numbers present among ``keys`` (sorted)."""
    prefix = self.decoder_block_prefix if decoder else self.block_prefix
    if prefix is None:
      return []
    pattern = re.compile("^" + re.escape(prefix).replace(r"\{\}", r"(\d+)"))
    found = {int(m.group(1)) for m in map(pattern.match, keys) if m}
    return sorted(found)

  def is_decoder_key(self, key: str) -> bool:
    if self.decoder is None:
      return False
    if any(key == row[1] for row in self.decoder):
      return True
    return bool(self.block_indices([key], decoder=True))


_OFFICIAL_ENCODER = _rows(
    ("cls_token", "cls_token", SAME),
    ("pos_embed", "pos_embed", POS),
    ("patch_embed/proj/kernel", "patch_embed.proj.weight", CONV),
    ("patch_embed/proj/bias", "patch_embed.proj.bias", SAME),
    ("norm/scale", "norm.weight", SAME), ("norm/bias", "norm.bias", SAME),
)
_OFFICIAL_DECODER = _rows(
    ("mask_token", "mask_token", SAME),
    ("decoder_pos_embed", "decoder_pos_embed", POS),
    ("decoder_embed/kernel", "decoder_embed.weight", LINEAR),
    ("decoder_embed/bias", "decoder_embed.bias", SAME),
    ("decoder_norm/scale", "decoder_norm.weight", SAME),
    ("decoder_norm/bias", "decoder_norm.bias", SAME),
    ("decoder_pred/kernel", "decoder_pred.weight", LINEAR),
    ("decoder_pred/bias", "decoder_pred.bias", SAME),
)
_HF_ENCODER = _rows(
    ("cls_token", "vit.embeddings.cls_token", SAME),
    ("pos_embed", "vit.embeddings.position_embeddings", POS),
    ("patch_embed/proj/kernel", "vit.embeddings.patch_embeddings.projection.weight", CONV),
    ("patch_embed/proj/bias", "vit.embeddings.patch_embeddings.projection.bias", SAME),
    ("norm/scale", "vit.layernorm.weight", SAME), ("norm/bias", "vit.layernorm.bias", SAME),
)
_HF_DECODER = _rows(
    ("mask_token", "decoder.mask_token", SAME),
    ("decoder_pos_embed", "decoder.decoder_pos_embed", POS),
    ("decoder_embed/kernel", "decoder.decoder_embed.weight", LINEAR),
    ("decoder_embed/bias", "decoder.decoder_embed.bias", SAME),
    ("decoder_norm/scale", "decoder.decoder_norm.weight", SAME),
    ("decoder_norm/bias", "decoder.decoder_norm.bias", SAME),
    ("decoder_pred/kernel", "decoder.decoder_pred.weight", LINEAR),
    ("decoder_pred/bias", "decoder.decoder_pred.bias", SAME),
)

_VIDEOMAE_ENCODER = _rows(
    ("patch_embed/proj/kernel", "videomae.embeddings.patch_embeddings.projection.weight",
     CONV3D),
    ("patch_embed/proj/bias", "videomae.embeddings.patch_embeddings.projection.bias", SAME),
    ("norm/scale", "videomae.layernorm.weight", SAME),
    ("norm/bias", "videomae.layernorm.bias", SAME),
)
_VIDEOMAE_DECODER = _rows(
    ("mask_token", "mask_token", SAME),
    ("decoder_embed/kernel", "encoder_to_decoder.weight", LINEAR),
    ("decoder_norm/scale", "decoder.norm.weight", SAME),
    ("decoder_norm/bias", "decoder.norm.bias", SAME),
    ("decoder_pred/kernel", "decoder.head.weight", LINEAR),
    ("decoder_pred/bias", "decoder.head.bias", SAME),
)

LAYOUTS = {
    "official": Layout(_OFFICIAL_ENCODER, _OFFICIAL_DECODER, _BLOCK_OFFICIAL,
                       "blocks.{}.", "decoder_blocks.{}."),
    # timm's VisionTransformer uses the official encoder names exactly (the released
    # encoder-only MAE checkpoints are timm state dicts).
    "timm": Layout(_OFFICIAL_ENCODER, None, _BLOCK_OFFICIAL, "blocks.{}.", None),
    "hf": Layout(_HF_ENCODER, _HF_DECODER, _BLOCK_HF,
                 "vit.encoder.layer.{}.", "decoder.decoder_layers.{}."),
    "videomae": Layout(_VIDEOMAE_ENCODER, _VIDEOMAE_DECODER, _BLOCK_VIDEOMAE,
                       "videomae.encoder.layer.{}.", "decoder.decoder_layers.{}."),
}

# Other spellings of the Hugging Face keys, rewritten to the Hub names above:
# transformers >= 5 module names (``model.state_dict()``) and what its
# ``save_pretrained`` writes for the decoder.
_HF_ALIASES = (
    (r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
    (r"^decoder\.decoder_encoder\.layer\.(\d+)\.", r"decoder.decoder_layers.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
# What ``save_pretrained`` writes for VideoMAE's attention biases (the original
# VideoMAE names, which transformers renames when it loads them).
_VIDEOMAE_ALIASES = (
    (r"\.attention\.attention\.q_bias$", ".attention.attention.query.bias"),
    (r"\.attention\.attention\.v_bias$", ".attention.attention.value.bias"),
)
# Per format: the model prefix an encoder-only ``ViTMAEModel`` / ``VideoMAEModel``
# state dict lacks, the keys that show it is one, and the rewrites above.
_SPELLINGS = {
    "hf": ("vit.", ("embeddings.", "encoder.layer.", "layernorm.", "layers."), _HF_ALIASES),
    "videomae": ("videomae.", ("embeddings.", "encoder.layer.", "layernorm."),
                 _VIDEOMAE_ALIASES),
}


def layout(fmt: str) -> Layout:
  if fmt not in LAYOUTS:
    from mae_jax.errors import UserError
    raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
  return LAYOUTS[fmt]


def canonical_keys(fmt: str, state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict with alternative spellings of ``fmt``'s keys rewritten."""
  out = dict(state_dict)
  if fmt not in _SPELLINGS:
    return out
  model_prefix, model_keys, aliases = _SPELLINGS[fmt]
  if not any(k.startswith((model_prefix, "decoder.")) for k in out) and any(
      k.startswith(model_keys) for k in out):
    out = {model_prefix + k: v for k, v in out.items()}
  renamed = {}
  for key, value in out.items():
    for pattern, repl in aliases:
      key = re.sub(pattern, repl, key)
    renamed[key] = value
  return renamed


def entries(fmt: str, depth: int, decoder_depth: int | None) -> list[Entry]:
  """All entries of ``fmt`` for a model with these depths (``None``: no decoder)."""
  lay = layout(fmt)

  def top(rows):
    for row in rows:
      path, name, kind = row[:3]
      if kind == POS:
        yield Entry(name, None, POS, table="decoder" if path.startswith("decoder") else "encoder")
      else:
        yield Entry(name, tuple(path.split("/")), kind)

  def blocks(n, ours_prefix, prefix):
    for i in range(n):
      for row in lay.block:
        path, name, kind = row[:3]
        part = row[3] if len(row) > 3 else None
        yield Entry(prefix.format(i) + name, (f"{ours_prefix}_{i}", *path.split("/")), kind,
                    part=part)

  out = list(top(lay.encoder)) + list(blocks(depth, "blocks", lay.block_prefix))
  if decoder_depth is not None:
    if lay.decoder is None:
      raise ValueError(f"format {fmt!r} has no decoder")
    out += list(top(lay.decoder))
    out += list(blocks(decoder_depth, "decoder_blocks", lay.decoder_block_prefix))
  return out


# ------------------------------------------------------------- layout transforms


def torch_shape(entry: Entry, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of an entry whose parameter of ours has ``our_shape``."""
  s = tuple(our_shape)
  kind = entry.kind
  if kind == SAME:
    return s
  if kind == LINEAR:
    return (s[1], s[0])
  if kind == CONV:
    return (s[3], s[2], s[0], s[1])
  if kind == CONV3D:
    return (s[4], s[3], s[0], s[1], s[2])
  if kind == QKV:
    return (int(np.prod(s[1:])), s[0])
  if kind == QKV_BIAS:
    return (int(np.prod(s)),)
  if kind == ATTN_OUT:
    return (s[2], s[0] * s[1])
  if kind == QKV_PART:
    return (s[2] * s[3], s[0])
  if kind == QKV_BIAS_PART:
    return (s[1] * s[2],)
  raise ValueError(f"no parameter shape for kind {kind!r}")


def to_torch(entry: Entry, value: np.ndarray) -> np.ndarray:
  """Our tensor -> the PyTorch tensor of ``entry`` (contiguous)."""
  x = np.asarray(value)
  kind = entry.kind
  if kind == SAME:
    y = x
  elif kind == LINEAR:
    y = x.T
  elif kind == CONV:
    y = x.transpose(3, 2, 0, 1)
  elif kind == CONV3D:
    y = x.transpose(4, 3, 0, 1, 2)
  elif kind == QKV:
    y = x.reshape(x.shape[0], -1).T
  elif kind in (QKV_BIAS,):
    y = x.reshape(-1)
  elif kind == ATTN_OUT:
    y = x.reshape(-1, x.shape[-1]).T
  elif kind == QKV_PART:
    y = x[:, entry.part].reshape(x.shape[0], -1).T
  elif kind == QKV_BIAS_PART:
    y = x[entry.part].reshape(-1)
  else:
    raise ValueError(f"cannot convert kind {kind!r}")
  return np.ascontiguousarray(y)


def from_torch(entry: Entry, value: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
  """PyTorch tensor -> ours (for QKV parts: the ``[D, H, hd]`` / ``[H, hd]`` slice).

  ``value`` must already have ``torch_shape(entry, our_shape)``.
  """
  y = np.asarray(value)
  s = tuple(our_shape)
  kind = entry.kind
  if kind == SAME:
    x = y
  elif kind == LINEAR:
    x = y.T
  elif kind == CONV:
    x = y.transpose(2, 3, 1, 0)
  elif kind == CONV3D:
    x = y.transpose(2, 3, 4, 1, 0)
  elif kind in (QKV, ATTN_OUT):
    x = y.T.reshape(s)
  elif kind == QKV_BIAS:
    x = y.reshape(s)
  elif kind == QKV_PART:
    x = y.T.reshape(s[0], s[2], s[3])
  elif kind == QKV_BIAS_PART:
    x = y.reshape(s[1:])
  else:
    raise ValueError(f"cannot convert kind {kind!r}")
  return np.ascontiguousarray(x)


# ------------------------------------------------------------------ classifiers
# ``mae_jax.models.vit.VisionTransformer`` (fine-tuned / probed) <-> the official
# ``models_vit.VisionTransformer`` (``global_pool=True``: avg + ``fc_norm``; the
# linear probe: ``global_pool=False`` and ``head = Sequential(BatchNorm1d, Linear)``),
# timm ``VisionTransformer`` (same names; a probe's BatchNorm folded into ``head``)
# and Hugging Face ``ViTForImageClassification`` (cls token after ``layernorm``
# only). The classifier's ``pos_embed`` is a learned parameter (kind SAME).

# The probe head's BatchNorm statistics (``batch_stats/head_norm``) in the official
# ``head.0`` module; ``num_batches_tracked`` is written as 0.
BN_HEAD_STATS = (("mean", "head.0.running_mean"), ("var", "head.0.running_var"))
BN_HEAD_COUNT = "head.0.num_batches_tracked"


def classifier_entries(fmt: str, depth: int, pool: str, bn_head: bool = False
                       ) -> list[Entry]:
  """Entries of a classifier with ``pool`` ("avg" / "cls"); ``bn_head``: the official
  probe's ``head.1`` names (other formats take the BatchNorm folded into the head)."""
  lay = layout(fmt)
  rows = [(ours, lay.torch_name(ours), SAME if ours == "pos_embed" else kind)
          for ours, kind in (("cls_token", SAME), ("pos_embed", SAME),
                             ("patch_embed/proj/kernel", CONV),
                             ("patch_embed/proj/bias", SAME))]
  if pool == "cls":
    rows += [("norm/scale", lay.torch_name("norm/scale"), SAME),
             ("norm/bias", lay.torch_name("norm/bias"), SAME)]
  elif fmt == "hf":
    raise ValueError("Hugging Face ViTForImageClassification has no average pooling")
  else:
    rows += [("fc_norm/scale", "fc_norm.weight", SAME), ("fc_norm/bias", "fc_norm.bias", SAME)]
  head = "classifier." if fmt == "hf" else "head.1." if bn_head else "head."
  rows += [("head/kernel", head + "weight", LINEAR), ("head/bias", head + "bias", SAME)]
  out = [Entry(name, tuple(path.split("/")), kind) for path, name, kind in rows]
  for i in range(depth):
    for row in lay.block:
      path, name, kind = row[:3]
      out.append(Entry(lay.block_prefix.format(i) + name, (f"blocks_{i}", *path.split("/")),
                       kind, part=row[3] if len(row) > 3 else None))
  return out
