"""Fine-tuned and probed classifiers <-> PyTorch.

Formats (``--format`` of ``mae-jax export`` on a fine-tuning or probing workdir):

* ``official`` -- facebookresearch/mae ``models_vit.VisionTransformer``:
  ``F.pth`` (``{"model": state_dict}``) + ``F.json`` (constructor kwargs with
  ``global_pool``; ``linear_probe_head: true`` when the head is the probe's
  ``Sequential(BatchNorm1d(affine=False, eps=1e-6), Linear)``, as
  ``main_linprobe.py`` builds it).
* ``timm`` -- a folder ``timm.create_model("local-dir:F", pretrained=True)`` loads:
  ``config.json`` (architecture, ``model_args``, ``pretrained_cfg`` with the
  dataset's mean/std, input size, bicubic, crop_pct) + ``model.safetensors``.
  Fine-tuned: ``global_pool="avg", fc_norm=True``; probed: ``global_pool="token"``
  with the BatchNorm folded into the head (exact: it is affine at inference).
* ``hf`` -- a ``ViTForImageClassification`` folder with ``preprocessor_config.json``
  (``AutoImageProcessor`` gets size, mean, std). Hugging Face's classifier reads
  the cls token after ``layernorm``: that is the probe (BatchNorm folded); a
  fine-tuned model (mean pooling + ``fc_norm``) has no Hugging Face class, and
  exporting one stops with an error instead of writing a different model.

Import (``official`` / ``timm`` state dicts with a head, e.g. the released
``mae_finetuned_vit_*.pth``) gives classifier params and a fine-tuning (or
probing) config; ``mae-jax import`` writes them as a workdir that ``mae-jax
finetune`` continues and ``mae-jax evaluate`` evaluates.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from mae_jax.errors import CheckpointError, UserError
from mae_jax.export import names, official
from mae_jax.export.mae import default_num_heads, set_path
from mae_jax.sizes import image_hw

LN_EPS = 1e-6


def is_classifier_config(config) -> bool:
  return "task" in config and "num_classes" in config


def is_classifier_state_dict(keys) -> bool:
  keys = set(keys)
  return bool({"head.weight", "head.1.weight", "fc_norm.weight", "classifier.weight"} & keys)


def _flatten(tree, prefix=()) -> dict:
  """``{("a", "b"): leaf}`` of a nested mapping."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def _arrays(tree) -> dict:
  """Flat float32 arrays of a params tree in the per-block layout (scanned or not)."""
  import flax.linen as nn
  from mae_jax import stacking
  return {k: np.asarray(v, np.float32)
          for k, v in _flatten(stacking.per_block(nn.unbox(tree))).items()}


def fold_batchnorm(kernel, bias, mean, var, eps: float = LN_EPS):
  """``head(BN(x))`` as one linear layer: BatchNorm without affine is
  ``(x - mean) / sqrt(var + eps)`` at inference. ``kernel`` is ``[D, C]``."""
  scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
  k = np.asarray(kernel, np.float64) * scale[:, None]
  b = np.asarray(bias, np.float64) - (np.asarray(mean, np.float64) * scale) @ np.asarray(
      kernel, np.float64)
  return k.astype(np.float32), b.astype(np.float32)


def to_torch_state_dict(params, batch_stats, config, fmt: str) -> dict[str, np.ndarray]:
  """A classifier's params (+ the probe's BatchNorm statistics) in ``fmt``."""
  m = config.model
  probe = config.task == "linprobe"
  if fmt == "videomae":
    raise UserError("--format=videomae writes VideoMAEForPreTraining, a pretraining model; "
                    "export a classifier with --format=official, timm or hf.")
  if int(m.get("tubelet_size", 0)) or not m.get("use_cls_token", True):
    raise UserError(f"a video classifier (model.tubelet_size={m.get('tubelet_size', 0)}, "
                    f"use_cls_token={m.get('use_cls_token', True)}) has no {fmt} export: "
                    "the formats hold image ViTs; evaluate it with mae-jax evaluate.")
  if fmt == "hf" and m.pool != "cls":
    raise UserError("a fine-tuned model (mean pooling + fc_norm) has no Hugging Face class "
                    "that computes the same thing (ViTForImageClassification reads the cls "
                    "token); export it with --format=timm or --format=official.")
  flat = _arrays(params)
  stats = _arrays(batch_stats or {})
  if probe and fmt != "official":
    flat[("head", "kernel")], flat[("head", "bias")] = fold_batchnorm(
        flat[("head", "kernel")], flat[("head", "bias")], stats[("head_norm", "mean")],
        stats[("head_norm", "var")])
  entries = names.classifier_entries(fmt, int(m.depth), m.pool,
                                     bn_head=probe and fmt == "official")
  missing = [e.ours for e in entries if e.ours not in flat]
  if missing:
    raise CheckpointError("the classifier params lack "
                          f"{', '.join('/'.join(p) for p in missing[:6])}.")
  sd = {e.torch: names.to_torch(e, flat[e.ours]) for e in entries}
  if probe and fmt == "official":
    for ours, theirs in names.BN_HEAD_STATS:
      sd[theirs] = stats[("head_norm", ours)]
    sd[names.BN_HEAD_COUNT] = np.zeros((), np.int64)
  return sd


def metadata(config, fmt: str) -> dict:
  m, d = config.model, config.data
  (h, w), channels, classes = image_hw(d.image_size), int(d.channels), int(config.num_classes)
  size = h if h == w else [h, w]  # timm and Hugging Face's ViT take (height, width)
  avg = m.pool == "avg"
  if fmt == "official":
    if h != w:
      raise CheckpointError(f"cannot export to --format=official: data.image_size=({h}, {w}) "
                            "is not square and the official models_vit.py takes one "
                            "img_size; use --format=timm or hf.")
    return {"model": "models_vit.VisionTransformer",
            "kwargs": dict(img_size=size, patch_size=int(m.patch_size), in_chans=channels,
                           num_classes=classes, embed_dim=int(m.embed_dim),
                           depth=int(m.depth), num_heads=int(m.num_heads),
                           mlp_ratio=float(m.mlp_ratio), qkv_bias=True, global_pool=avg),
            "norm_layer_eps": LN_EPS, "linear_probe_head": config.task == "linprobe"}
  from mae_jax.export import hf, timm as timm_format
  if fmt == "timm":
    model_args = dict(img_size=size, patch_size=int(m.patch_size), in_chans=channels,
                      embed_dim=int(m.embed_dim), depth=int(m.depth),
                      num_heads=int(m.num_heads), mlp_ratio=float(m.mlp_ratio),
                      qkv_bias=True, class_token=True, global_pool="avg" if avg else "token",
                      fc_norm=avg, num_classes=classes)
    return {"model_name": timm_format.model_name(config), "kwargs": model_args,
            "pretrained_cfg": timm_format.pretrained_cfg(config, classes)}
  return {"architectures": ["ViTForImageClassification"], "model_type": "vit",
          "hidden_size": int(m.embed_dim), "num_hidden_layers": int(m.depth),
          "num_attention_heads": int(m.num_heads),
          "intermediate_size": int(m.embed_dim * m.mlp_ratio), "hidden_act": "gelu",
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
          "layer_norm_eps": LN_EPS, "image_size": size, "patch_size": int(m.patch_size),
          "num_channels": channels, "qkv_bias": True,
          "id2label": {str(i): f"LABEL_{i}" for i in range(classes)},
          "label2id": {f"LABEL_{i}": i for i in range(classes)},
          "preprocessor": hf.preprocessor(config)}


def write(sd: Mapping[str, np.ndarray], meta: dict, fmt: str, out: str) -> list[str]:
  from mae_jax.export import hf, timm as timm_format
  if fmt == "official":
    return official.write(sd, meta, out)
  return (timm_format if fmt == "timm" else hf).write(sd, meta, out)


def save(params, batch_stats, config, fmt: str, out: str) -> list[str]:
  return write(to_torch_state_dict(params, batch_stats, config, fmt),
               metadata(config, fmt), fmt, out)


# --------------------------------------------------------------------- import


def from_torch_state_dict(sd: Mapping[str, np.ndarray], fmt: str,
                          meta: Mapping[str, Any] | None = None,
                          source: str = "the state dict"):
  """``(params, batch_stats, config)`` of an official / timm classifier state dict."""
  from mae_jax import config_lib
  if fmt not in ("official", "timm"):
    raise UserError(f"importing a classifier reads --format=official or timm, not {fmt}.")
  sd = {k: np.asarray(v) for k, v in sd.items()}
  kwargs = dict((meta or {}).get("kwargs", (meta or {}).get("model_args", {})) or {})
  bn_head = "head.1.weight" in sd
  head = "head.1." if bn_head else "head."
  if head + "weight" not in sd or "patch_embed.proj.weight" not in sd:
    raise CheckpointError(f"{source} is not a ViT classifier state dict (no {head}weight or "
                          "patch_embed.proj.weight).")
  pool = "avg" if "fc_norm.weight" in sd else "cls"
  embed_dim, channels, patch, _ = sd["patch_embed.proj.weight"].shape
  depth = len(names.layout(fmt).block_indices(sd))
  classes = int(sd[head + "weight"].shape[0])
  grid = math.isqrt(sd["pos_embed"].shape[-2] - 1)
  heads = int(kwargs.get("num_heads") or default_num_heads(int(embed_dim)) or 0)
  if not heads:
    raise CheckpointError(f"num_heads of a {embed_dim}-wide ViT is not in the weights; put "
                          "it in the JSON beside them (kwargs.num_heads).")
  config = (config_lib.linprobe_defaults if bn_head else config_lib.finetune_defaults)("B/16")
  config.model.update(name=f"imported/{patch}", embed_dim=int(embed_dim), depth=depth,
                      num_heads=heads, patch_size=int(patch), pool=pool,
                      mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim)
  config.num_classes = classes
  config.data.update(image_size=int(grid * patch), channels=int(channels))
  entries = names.classifier_entries(fmt, depth, pool, bn_head=bn_head and fmt == "official")
  expected = {e.torch for e in entries} | (
      {n for _, n in names.BN_HEAD_STATS} | {names.BN_HEAD_COUNT} if bn_head else set())
  missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
  if missing or unexpected:
    raise CheckpointError(f"{source} does not fit a {pool}-pooled classifier of depth {depth}: "
                          + "; ".join(p for p in (
                              f"missing {', '.join(missing[:8])}" if missing else "",
                              f"unexpected {', '.join(unexpected[:8])}" if unexpected else "")
                                      if p) + ".")
  from mae_jax.train import classifier
  model = classifier.build_classifier(config)
  shapes = _classifier_shapes(model, config)
  params: dict = {}
  for e in entries:
    set_path(params, e.ours, names.from_torch(e, sd[e.torch], shapes[e.ours]).astype(np.float32))
  batch_stats = ({"head_norm": {ours: sd[theirs].astype(np.float32)
                                for ours, theirs in names.BN_HEAD_STATS}} if bn_head else {})
  return params, batch_stats, config


def _classifier_shapes(model, config) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  (h, w), channels = image_hw(config.data.image_size), int(config.data.channels)
  model = model.clone(scan_layers=False)  # the per-block names of every export format
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, h, w, channels))))
  return {p: tuple(v.shape) for p, v in _flatten(nn.unbox(abstract["params"])).items()}
