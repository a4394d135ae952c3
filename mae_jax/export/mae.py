"""The MAE (``MaskedAutoencoder``, images or clips) <-> PyTorch state dicts and files.

In memory (NumPy only; no torch needed)::

    sd = to_torch_state_dict(params, config, "official")        # {name: np.ndarray}
    imported = from_torch_state_dict(sd, "official")            # .params, .config

Files::

    save(params, config, "official", "F.pth")       # F.pth + F.json
    imported = import_file("F.pth", "official")     # then checkpoint.write_workdir

The name map lives in ``mae_jax.export.names``; one module per format
(``official``, ``timm``, ``hf``, ``videomae``) reads and writes its files; the
classifier's conversions are ``mae_jax.export.classifier``. torch, timm and
transformers are optional: torch is imported only to read or write ``.pth``.
"""
from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from mae_jax.errors import CheckpointError, UserError
from mae_jax.export import names

FORMATS = names.FORMATS

# Width -> heads of the released models where the file does not say (heads are not
# visible in tensor shapes): ViT-S/B/L/H encoders, and the 512-wide MAE decoder.
_KNOWN_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_TABLE_ATOL = 5e-3  # bfloat16-stored sin-cos tables are within 2e-3
_MAX_LISTED = 20


class Imported(NamedTuple):
  params: dict          # nested dict of float32 NumPy arrays, our per-block layout
  config: Any           # full pretraining ConfigDict for this architecture
  has_decoder: bool     # False: decoder and mask token were freshly initialised
  notices: list         # one-line messages (also logged)


def format_module(fmt: str):
  """``mae_jax.export.official`` / ``.timm`` / ``.hf``."""
  names.layout(fmt)  # validates the name
  return importlib.import_module(f"mae_jax.export.{fmt}")


# ------------------------------------------------------------------------ export


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    path = prefix + (str(key),)
    if isinstance(value, Mapping):
      out.update(_flatten(value, path))
    else:
      out[path] = value
  return out


def _plain_params(params) -> dict:
  """Unboxed nested dict in the per-block layout (accepts ``{"params": ...}``,
  FrozenDicts, jax arrays, a scanned model's stacked blocks)."""
  import flax.linen as nn
  from mae_jax import stacking
  params = nn.unbox(params)
  if isinstance(params, Mapping) and set(params) == {"params"}:
    params = params["params"]
  if not isinstance(params, Mapping):
    raise UserError(f"params must be a nested dict, got {type(params).__name__}.")
  return stacking.per_block(params)


def _abstract_params(model, config) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our parameter shapes for ``model`` in the per-block layout every format maps
  (``jax.eval_shape``, nothing allocated)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from mae_jax.models import registry
  model = model.clone(scan_layers=False)

  def init():
    key = jax.random.key(0)
    return model.init({"params": key, "masking": key}, jnp.zeros(registry.input_shape(config)),
                      train=False)["params"]
  shapes = nn.unbox(jax.eval_shape(init))
  return {path: tuple(leaf.shape) for path, leaf in _flatten(shapes).items()}


def _grid(config) -> tuple[int, int]:
  """``(gh, gw)``: the patch grid of ``config.data.image_size`` (an int or a pair)."""
  from mae_jax.models import registry
  return tuple(registry.patch_grid(config))


def _tables(config) -> dict[str, np.ndarray]:
  from mae_jax.models.pos_embed import sincos_2d
  grid = _grid(config)
  return {"encoder": sincos_2d(int(config.model.embed_dim), grid, cls_token=True)[None],
          "decoder": sincos_2d(int(config.model.decoder_embed_dim), grid, cls_token=True)[None]}


def _path(p: tuple[str, ...]) -> str:
  return "/".join(p)


def _listing(items, limit: int = _MAX_LISTED) -> str:
  items = list(items)
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# Pretraining-only heads no format holds: the contrastive projection (model.contrastive).
NOT_EXPORTED = ("contrastive_proj",)


def to_torch_state_dict(params, config, format: str) -> dict[str, np.ndarray]:
  """Our params (for ``config``) as a PyTorch state dict of float32 NumPy arrays.

  A model whose target is not pixels (``model.target`` hog / teacher) exports its
  encoder only (``official``: as the released encoder-only ``mae_pretrain_vit_*.pth``;
  ``hf`` refuses); the contrastive projection head is never exported.

  ``official``: the full ``MaskedAutoencoderViT``; ``timm``: the encoder as a
  ``VisionTransformer``; ``hf``: ``ViTMAEForPreTraining`` (Hub key names). The
  fixed sin-cos position tables are written for ``config.data.image_size``.
  """
  from mae_jax.models import registry
  flat = {p: np.asarray(v, np.float32) for p, v in _flatten(_plain_params(params)).items()
          if not p[0].startswith(NOT_EXPORTED)}
  model = registry.build_mae(config)
  expected = {p: s for p, s in _abstract_params(model, config).items()
              if not p[0].startswith(NOT_EXPORTED)}
  target = config.model.get("target", "pixels")
  with_decoder = names.layout(format).decoder is not None and target == "pixels"
  if target != "pixels" and format in ("hf", "videomae"):
    raise UserError(
        f"model.target={target}: --format={format} holds a pixel decoder, and this model's "
        "decoder predicts other values; export the encoder with --format=timm or "
        "--format=official (encoder only, as the released mae_pretrain_vit_*.pth).")
  missing = sorted(_path(p) for p in set(expected) - set(flat))
  extra = sorted(_path(p) for p in set(flat) - set(expected))
  wrong = [f"{_path(p)} {flat[p].shape} (config: {s})" for p, s in sorted(expected.items())
           if p in flat and flat[p].shape != s]
  if missing or extra or wrong:
    parts = [f"missing {_listing(missing)}" if missing else "",
             f"unexpected {_listing(extra)}" if extra else "",
             f"shapes {_listing(wrong)}" if wrong else ""]
    raise CheckpointError("params do not match the config's model: "
                          + "; ".join(p for p in parts if p) + ".")
  check = getattr(format_module(format), "check_expressible", None)
  if check is not None:
    check(config)
  m = config.model
  entries = names.entries(format, int(m.depth), int(m.decoder_depth) if with_decoder else None)
  tables = _tables(config) if any(e.kind == names.POS for e in entries) else {}
  out = {}
  for e in entries:
    out[e.torch] = tables[e.table] if e.kind == names.POS else names.to_torch(e, flat[e.ours])
  return out


def torch_metadata(config, format: str) -> dict:
  """What travels beside the weights: official kwargs, timm name/kwargs, HF config."""
  return format_module(format).metadata(config)


def writes_directory(format: str, out: str) -> bool:
  """Whether ``save`` (or the classifier export) to ``out`` makes a directory."""
  from mae_jax.export import timm
  return format in ("hf", "videomae") or (format == "timm" and timm.is_local_dir(out))


def save(params, config, format: str, out: str) -> list[str]:
  """Writes ``params`` in ``format`` to ``out``; returns the paths written.

  ``official``/``timm``: ``out`` is ``F.pth`` (or ``F.safetensors``), plus ``F.json``;
  ``hf``: ``out`` is a directory (``config.json`` + ``model.safetensors``).
  """
  sd = to_torch_state_dict(params, config, format)
  return format_module(format).write(sd, torch_metadata(config, format), out)


# ------------------------------------------------------------------------ import


def default_num_heads(width: int, decoder: bool = False) -> int | None:
  """Heads when the file does not say: the released models' (64 per head in the
  encoder, ViT-H 16; 32 per head in the decoder, as the 512-wide, 16-head one)."""
  if decoder:
    return width // 32 if width % 32 == 0 else None
  if width in _KNOWN_HEADS:
    return _KNOWN_HEADS[width]
  return width // 64 if width % 64 == 0 else None


def _guess_format(keys) -> str | None:
  keys = list(keys)
  if any(k.startswith("videomae.") for k in keys):
    return "videomae"
  if any(k.startswith(("vit.", "decoder.decoder_", "embeddings.")) for k in keys):
    return "hf"
  if any(k.startswith(("decoder_blocks.", "decoder_embed.")) or k == "mask_token" for k in keys):
    return "official"
  if any(k.startswith("blocks.") for k in keys):
    return "timm"
  return None


def _infer(sd: dict, fmt: str, source: str) -> dict:
  """Dimensions visible in the tensor shapes."""
  lay = names.layout(fmt)
  keys = list(sd)
  depth = len(lay.block_indices(keys))
  need = [lay.torch_name("cls_token"), lay.torch_name("patch_embed/proj/kernel"),
          lay.torch_name("pos_embed")]
  if depth:
    need.append(lay.block_name(0, "mlp/fc1/kernel"))
  has_decoder = any(lay.is_decoder_key(k) for k in keys)
  decoder_depth = len(lay.block_indices(keys, decoder=True)) if has_decoder else 0
  if has_decoder:
    need.append(lay.torch_name("decoder_embed/kernel"))
    if decoder_depth:
      need.append(lay.block_name(0, "mlp/fc1/kernel", decoder=True))
  absent = [k for k in need if k not in sd]
  if absent or not depth:
    guess = _guess_format(keys)
    hint = (f" The keys look like the {guess!r} layout: pass --format={guess}."
            if guess and guess != fmt and not (guess == "timm" and fmt == "official") else "")
    what = f"missing {_listing(absent)}" if absent else f"no {lay.block_prefix.format('N')}* keys"
    raise CheckpointError(f"{source} is not a {fmt} MAE state dict ({what}; it has "
                          f"{len(keys)} keys, e.g. {_listing(sorted(keys), 5)}).{hint}")
  patch = sd[need[1]]
  if patch.ndim != 4 or patch.shape[2] != patch.shape[3]:
    raise CheckpointError(f"{need[1]} has shape {patch.shape}; expected [D, C, p, p].")
  embed_dim, in_chans, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
  pos = sd[need[2]]
  length = pos.shape[-2] - 1 if pos.ndim >= 2 else -1
  grid = math.isqrt(max(length, 0))
  if length <= 0:
    raise CheckpointError(f"{need[2]} has shape {pos.shape}; expected [1, 1 + gh*gw, D] for "
                          "a grid of patches plus cls.")
  if grid * grid != length:  # a rectangular grid: its sides come from the config or metadata
    grid = None
  out = dict(embed_dim=int(embed_dim), in_chans=int(in_chans), patch_size=int(patch_size),
             depth=depth, mlp_ratio=sd[need[3]].shape[0] / embed_dim, grid=grid, length=length,
             has_decoder=has_decoder)
  if has_decoder:
    out["decoder_embed_dim"] = int(sd[need[4]].shape[0])
    out["decoder_depth"] = decoder_depth
    if decoder_depth:
      ratio = sd[need[5]].shape[0] / out["decoder_embed_dim"]
      if abs(ratio - out["mlp_ratio"]) > 1e-9:
        raise CheckpointError(f"{need[5]} gives MLP ratio {ratio:g}, the encoder "
                              f"{out['mlp_ratio']:g}; mae_jax models share one mlp_ratio.")
  return out


def _variant_name(model_cfg) -> str:
  from mae_jax.models import registry
  dims = (model_cfg.embed_dim, model_cfg.depth, model_cfg.num_heads,
          model_cfg.decoder_embed_dim, model_cfg.decoder_depth, model_cfg.decoder_num_heads)
  for size, known in registry.SIZES.items():
    if tuple(known) == tuple(dims):
      return f"{size}/{model_cfg.patch_size}"
  return f"imported/{model_cfg.patch_size}"


def _config_from_arch(inferred: dict, arch: dict, image_size: int | None,
                      notices: list) -> Any:
  """A full pretraining config from the shapes plus the sidecar metadata."""
  from mae_jax import config_lib
  for key in ("embed_dim", "depth", "patch_size", "in_chans", "decoder_embed_dim",
              "decoder_depth"):
    if key in arch and key in inferred and int(arch[key]) != int(inferred[key]):
      raise CheckpointError(f"the metadata says {key}={arch[key]} but the weights have "
                            f"{key}={inferred[key]}.")
  if "mlp_ratio" in arch and abs(float(arch["mlp_ratio"]) - inferred["mlp_ratio"]) > 1e-6:
    raise CheckpointError(f"the metadata says mlp_ratio={arch['mlp_ratio']} but the weights "
                          f"have {inferred['mlp_ratio']:g}.")
  c = config_lib.pretrain_defaults("B/16")
  m = c.model
  m.embed_dim, m.depth = inferred["embed_dim"], inferred["depth"]
  m.patch_size, m.mlp_ratio = inferred["patch_size"], float(inferred["mlp_ratio"])
  if inferred["has_decoder"]:
    m.decoder_embed_dim = inferred["decoder_embed_dim"]
    m.decoder_depth = inferred["decoder_depth"]
  else:
    m.decoder_embed_dim = int(arch.get("decoder_embed_dim", m.decoder_embed_dim))
    m.decoder_depth = int(arch.get("decoder_depth", m.decoder_depth))
  for key, width, decoder in (("num_heads", m.embed_dim, False),
                              ("decoder_num_heads", m.decoder_embed_dim, True)):
    if key in arch:
      setattr(m, key, int(arch[key]))
      continue
    heads = default_num_heads(width, decoder)
    if heads is None:
      raise CheckpointError(
          f"{key} is not stored in the weights and width {width} has no default; put it in "
          "the JSON beside the weights (e.g. F.json for F.pth) or pass --config.")
    setattr(m, key, heads)
    if decoder and not inferred["has_decoder"] and "decoder_embed_dim" not in arch:
      continue  # the fresh decoder is the official default; said below
    notices.append(f"{key} is not stored in the weights; assuming {heads} (width {width}"
                   f"{', as the official MAE decoder' if decoder else ', as the released ViTs'}"
                   "). A JSON beside the weights overrides it.")
  if "mask_ratio" in arch:
    m.mask_ratio = float(arch["mask_ratio"])
  if "norm_pix_loss" in arch:
    m.norm_pix_loss = bool(arch["norm_pix_loss"])
  m.name = _variant_name(m)
  c.data.channels = inferred["in_chans"]
  meta_size = arch.get("img_size")
  if isinstance(meta_size, (list, tuple)) and image_size is None:  # timm's (height, width)
    if len(meta_size) != 2 or (meta_size[0] // inferred["patch_size"]) * (
        meta_size[1] // inferred["patch_size"]) != inferred["length"]:
      raise CheckpointError(f"the metadata says img_size={list(meta_size)}, which does not "
                            f"fit the position table's {inferred['length']} patches.")
    with c.data.ignore_type():
      c.data.image_size = (int(meta_size[0]), int(meta_size[1]))
    return c
  if inferred["grid"] is None and image_size is None:
    raise CheckpointError(f"the position table has {inferred['length']} patches, no square "
                          "grid, and no metadata gives the image's (height, width); import "
                          "with a config (data.image_size) that has it.")
  c.data.image_size = int(image_size or inferred["grid"] * inferred["patch_size"])
  if "img_size" in arch and image_size is None and int(arch["img_size"]) != c.data.image_size:
    notices.append(f"the metadata says img_size={arch['img_size']}, the position tables "
                   f"{c.data.image_size}; using {c.data.image_size} (set --image_size to choose).")
  return c


def _check_table(name: str, table: np.ndarray, dim: int, target_grid: tuple[int, int],
                 notices: list, warnings: list):
  """Warns when an imported position table is not the fixed sin-cos one (of the
  model's ``(gh, gw)`` grid when its rows fit it, else of a square grid)."""
  from mae_jax.models.pos_embed import sincos_2d
  table = table.reshape(-1, dim)
  rows = table.shape[0] - 1
  side = math.isqrt(rows)
  grid = tuple(target_grid) if rows == math.prod(target_grid) else (side, side)
  if math.prod(grid) != rows:
    warnings.append(f"{name} has {rows} patch rows, which form no grid of the model's; "
                    "mae_jax uses fixed sin-cos tables, so it is dropped.")
    return
  diff = float(np.max(np.abs(table - sincos_2d(dim, grid, cls_token=True))))
  if diff > _TABLE_ATOL:
    warnings.append(f"{name} differs from the fixed 2-D sin-cos table (max |diff| "
                    f"{diff:.3g}); a learned or fine-tuned table? mae_jax uses fixed sin-cos "
                    "tables, so it is dropped.")
  if grid != tuple(target_grid):
    notices.append(f"{name} is for a {grid[0]}x{grid[1]} patch grid; the model uses the "
                   f"sin-cos table of the {target_grid[0]}x{target_grid[1]} grid of its "
                   "image size.")


def from_torch_state_dict(state_dict: Mapping[str, Any], format: str, config=None, *,
                          metadata: Mapping[str, Any] | None = None,
                          image_size: int | None = None, seed: int | None = None,
                          source: str = "the state dict") -> Imported:
  """A PyTorch state dict (tensors or arrays) in ``format`` -> our params and config.

  The architecture comes from ``config`` when given (the weights must match it),
  else from the tensor shapes plus ``metadata`` (the JSON that travels with the
  weights: official kwargs, timm ``{"model_name", "kwargs"}`` or HF
  ``config.json``), with the released models' head counts as the fallback. An
  encoder-only state dict gets a freshly initialised decoder (``seed``, default
  ``config.seed``). Unexpected or missing keys and mismatched shapes raise a
  ``CheckpointError`` that names them. Position tables are checked against the
  fixed sin-cos tables and not imported.
  """
  fmt_module = format_module(format)
  notices: list[str] = []
  warnings: list[str] = []
  sd, note = format_module("official").unwrap(state_dict, source)
  if note:
    notices.append(note)
  sd = names.canonical_keys(format, sd)
  # VideoMAE's architecture is in its config.json only (no cls token or position
  # table in the weights); the image formats' shows in the tensor shapes.
  from_metadata = getattr(fmt_module, "config_from_metadata", None)
  if from_metadata is None:
    inferred = _infer(sd, format, source)
    has_decoder = inferred["has_decoder"]
  else:
    has_decoder = any(names.layout(format).is_decoder_key(k) for k in sd)
  if config is None and from_metadata is not None:
    config, meta_notes = from_metadata(metadata, source)
    notices += meta_notes
    if image_size is not None:
      config.data.image_size = int(image_size)
  elif config is None:
    arch, meta_notes = fmt_module.arch_from_metadata(metadata) if metadata else ({}, [])
    notices += meta_notes
    config = _config_from_arch(inferred, arch, image_size, notices)
  else:
    config = config.copy_and_resolve_references()
    config.unlock()
    if image_size is not None:
      config.data.image_size = int(image_size)
  check = getattr(fmt_module, "check_expressible", None)
  if check is not None:
    check(config)
  from mae_jax.models import registry
  model = registry.build_mae(config)
  shapes = _abstract_params(model, config)
  m = config.model
  entries = names.entries(format, int(m.depth), int(m.decoder_depth) if has_decoder else None)

  # Keys and shapes, all problems in one message.
  expected = {e.torch: e for e in entries}
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  wrong = []
  for name, e in expected.items():
    if name not in sd:
      continue
    got = tuple(sd[name].shape)
    if e.kind == names.POS:
      width = m.decoder_embed_dim if e.table == "decoder" else m.embed_dim
      n = got[-2] - 1 if len(got) >= 2 else -1
      ok = (len(got) in (2, 3) and got[:-2] in ((), (1,)) and got[-1] == width
            and n > 0 and (math.isqrt(n) ** 2 == n or n == math.prod(_grid(config))))
      want = f"(1, 1 + g*g, {width})"  # any square grid (resized), or the model's own
    else:
      want_shape = names.torch_shape(e, shapes[e.ours])
      ok, want = got == want_shape, str(want_shape)
    if not ok:
      wrong.append(f"{name} has shape {got}, the model expects {want}")
  if missing or unexpected or wrong:
    parts = []
    if missing:
      parts.append(f"missing keys: {_listing(missing)}")
    if unexpected:
      parts.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
      parts.append(f"mismatched shapes: {_listing(wrong)}")
    arch = f"{m.embed_dim} wide, depth {m.depth}, patch {m.patch_size}"
    if has_decoder:
      arch += f", decoder {m.decoder_embed_dim} wide, depth {m.decoder_depth}"
    raise CheckpointError(f"{source} does not fit a {format} MAE ({arch}): "
                          f"{'; '.join(parts)}.")

  params: dict = {}
  parts_of: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
  target_grid = _grid(config)
  for e in entries:
    if e.kind == names.POS:
      width = m.decoder_embed_dim if e.table == "decoder" else m.embed_dim
      _check_table(e.torch, sd[e.torch], int(width), target_grid, notices, warnings)
      continue
    x = names.from_torch(e, sd[e.torch], shapes[e.ours]).astype(np.float32, copy=False)
    if e.kind in (names.QKV_PART, names.QKV_BIAS_PART):
      parts_of.setdefault(e.ours, {})[e.part] = x
    else:
      set_path(params, e.ours, x)
  for path, parts in parts_of.items():
    # A layout without a key bias (VideoMAE) loses nothing: the bias adds the same
    # number to every logit of a query. It imports as zeros.
    set_path(params, path, np.stack([parts[i] if i in parts else np.zeros_like(parts[0])
                                     for i in range(3)],
                                    axis=1 if path[-1] == "kernel" else 0))
  if not has_decoder:
    seed = int(config.get("seed", 0) if seed is None else seed)
    params.update(_fresh_decoder(model, config, seed))
    notices.append(f"{source} has no decoder (an encoder-only checkpoint such as "
                   f"mae_pretrain_vit_*.pth): decoder and mask token freshly initialised "
                   f"({m.decoder_embed_dim} wide, depth {m.decoder_depth}, seed {seed}).")
  got = {p: v.shape for p, v in _flatten(params).items()}
  if got != shapes:  # the name map covers every parameter; anything else is a bug
    raise AssertionError(f"import produced {sorted(set(got) ^ set(shapes))}")
  for n in notices:
    logging.info("%s", n)
  for w in warnings:
    logging.warning("%s", w)
  return Imported(params=params, config=config, has_decoder=has_decoder,
                  notices=notices + warnings)


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  """``tree[path[0]][path[1]]... = value``, creating the dicts on the way."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _fresh_decoder(model, config, seed: int) -> dict:
  """Decoder parameters and mask token as ``model.init`` makes them.

  Initialises through ``decode`` only, so the encoder is neither built nor compiled;
  the values equal those of a full ``model.init`` with the same seed.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from mae_jax.train.step import init_rngs
  from mae_jax.models import registry
  grid = registry.patch_grid(config)
  model = model.clone(scan_layers=False)
  latent = jnp.zeros((1, 2, int(config.model.embed_dim)))
  ids_restore = jnp.arange(math.prod(grid))[None]
  variables = jax.jit(lambda: model.init(init_rngs(seed), latent, ids_restore, grid,
                                         method="decode"))()
  params = nn.unbox(variables["params"])
  return {k: jax.tree.map(np.asarray, v) for k, v in params.items()
          if k.startswith("decoder") or k == "mask_token"}


def load_file(path: str, format: str) -> tuple[dict, dict | None, list[str]]:
  """(state dict as NumPy, metadata JSON or None, notices) of a ``format`` file.

  Refuses weights holding NaN or Inf, naming the tensors: a model built from them
  would train or evaluate to NaN with no hint why.
  """
  sd, meta, notices = format_module(format).read(path)
  bad = [(name, int(np.size(v) - np.count_nonzero(np.isfinite(v))))
         for name, v in sd.items()
         if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
  if bad:
    listed = ", ".join(f"{name} ({count} of {np.size(sd[name])} values)"
                       for name, count in bad[:4])
    more = f" and {len(bad) - 4} more tensors" if len(bad) > 4 else ""
    raise CheckpointError(f"{path} holds non-finite weights (NaN or Inf) in {listed}{more}; "
                          "refusing to import them. Export the weights again from a healthy "
                          "checkpoint.")
  return sd, meta, notices


def import_file(path: str, format: str, config=None, *, image_size: int | None = None,
                metadata: Mapping[str, Any] | None = None,
                seed: int | None = None) -> Imported:
  """Reads ``path`` (``.pth`` with ``weights_only=True``, ``.safetensors``, or an HF
  directory) and converts it with ``from_torch_state_dict``. The JSON beside the
  weights (``F.json`` / ``config.json``) is used as metadata unless ``metadata``
  is given."""
  sd, file_meta, notices = load_file(path, format)
  for n in notices:
    logging.info("%s", n)
  out = from_torch_state_dict(sd, format, config, metadata=metadata or file_meta,
                              image_size=image_size, seed=seed, source=path)
  return out._replace(notices=notices + out.notices)

