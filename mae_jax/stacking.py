"""The two layouts of a model's transformer blocks, and the one adapter between them.

``model.scan_layers=False`` builds ``depth`` separate blocks named ``blocks_0``,
``blocks_1``, ... (and ``decoder_blocks_{i}``); ``scan_layers=True`` builds one
``nn.scan`` over a block whose parameters are *stacked*: one ``blocks`` (and one
``decoder_blocks``) subtree whose arrays carry a leading layer axis (logical axis
``layers``, replicated). The per-block layout is the project's canonical one:
exports, imports, ``init_from``, the analysis hooks and every name map in
``mae_jax.export`` see ``blocks_{i}``. Checkpoints hold the layout the run trained
with (no conversion, hence no extra copy of the state, at save time); a restore into
the other layout converts once (``mae_jax.checkpoint_io``).

* ``per_block`` / ``stacked``: nested dicts (params, ``batch_stats``; NumPy or jax
  arrays) from one layout to the other; idempotent.
* ``convert(source, like)``: any pytree (a whole train state, optimizer moments
  included, or its abstract ``ShapeDtypeStruct`` form) laid out as ``like``, leaf
  by leaf from the paths, so every optax state that mirrors the params converts.
* ``unstacked_ndim(path, leaf)``: a leaf's rank without the layer axis (what weight
  decay masks and LARS look at).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STACKED = ("blocks", "decoder_blocks")
LAYER_AXIS = "layers"
_BLOCK = re.compile(r"^(blocks|decoder_blocks)_(\d+)$")


def block_name(stack: str, index: int) -> str:
  return f"{stack}_{index}"


def _key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_names(path) -> tuple[str, ...]:
  """A ``jax.tree_util`` key path as strings (dict keys, attribute names, indices)."""
  return tuple(_key(k) for k in path)


def is_stacked(tree) -> bool:
  """Whether a params-like nested dict holds stacked blocks."""
  return isinstance(tree, Mapping) and any(name in tree for name in STACKED)


def unstacked_ndim(path, leaf) -> int:
  """``leaf.ndim`` without the layer axis when ``leaf`` sits under a stacked subtree."""
  stacked = any(name in STACKED for name in path_names(path))
  return leaf.ndim - 1 if stacked else leaf.ndim


def _take(leaf, index: int):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)
  return leaf[index]


def _stack(leaves: list):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(
          sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                sharding=sharding)
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _num_layers(subtree) -> int:
  leaves = jax.tree.leaves(subtree)
  if not leaves:
    raise ValueError("a stacked blocks subtree holds no arrays")
  return int(leaves[0].shape[0])


def per_block(tree):
  """A nested dict with every stacked ``blocks``/``decoder_blocks`` split into
  ``blocks_0 ...``; other entries (and an already per-block tree) unchanged."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if key in STACKED and isinstance(value, Mapping):
      for i in range(_num_layers(value)):
        out[block_name(key, i)] = jax.tree.map(lambda a, i=i: _take(a, i), value)
    else:
      out[key] = per_block(value) if isinstance(value, Mapping) else value
  return out


def stacked(tree):
  """A nested dict with every run ``blocks_0 ... blocks_{n-1}`` (and decoder blocks)
  stacked into one ``blocks`` subtree; the inverse of ``per_block``."""
  if not isinstance(tree, Mapping):
    return tree
  groups: dict[str, dict[int, Any]] = {}
  out = {}
  for key, value in tree.items():
    match = _BLOCK.match(str(key))
    if match and isinstance(value, Mapping):
      groups.setdefault(match.group(1), {})[int(match.group(2))] = value
    else:
      out[key] = stacked(value) if isinstance(value, Mapping) else value
  for name, blocks in groups.items():
    if sorted(blocks) != list(range(len(blocks))):
      raise ValueError(f"{name}_* are not numbered 0..{len(blocks) - 1}: {sorted(blocks)}")
    out[name] = jax.tree.map(lambda *xs: _stack(list(xs)),
                             *[blocks[i] for i in range(len(blocks))])
  return out


def to_layout(tree, scanned: bool):
  """``tree`` (either layout) in the stacked (``scanned``) or the per-block layout."""
  return stacked(tree) if scanned else per_block(tree)


def convert(source, like):
  """``source``'s leaves arranged as ``like`` (the same model in either layout).

  A leaf of ``like`` under ``blocks`` (stacked) is the stack of ``source``'s leaves
  under ``blocks_0, blocks_1, ...`` at the same path; one under ``blocks_i`` is
  slice ``i`` of ``source``'s stacked leaf; any other leaf is ``source``'s leaf at
  the same path. Works on values (NumPy or jax, inside ``jit`` too) and on
  ``jax.ShapeDtypeStruct`` (shardings follow: the layer axis is replicated).
  """
  flat = {path_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}

  def pick(path, _):
    names = path_names(path)
    if names in flat:
      return flat[names]
    for pos, name in enumerate(names):
      match = _BLOCK.match(name)
      if name in STACKED:
        parts, i = [], 0
        while (found := names[:pos] + (block_name(name, i),) + names[pos + 1:]) in flat:
          parts.append(flat[found])
          i += 1
        if parts:
          return _stack(parts)
      elif match:
        found = names[:pos] + (match.group(1),) + names[pos + 1:]
        if found in flat and int(match.group(2)) < flat[found].shape[0]:
          return _take(flat[found], int(match.group(2)))
    raise KeyError(f"{'/'.join(names)} has no counterpart in the source tree")

  return jax.tree_util.tree_map_with_path(pick, like)


def layouts_differ(source_paths, target_paths) -> bool:
  """Whether two sets of ``a/b/c`` leaf paths hold the same blocks in different layouts."""
  def layout(paths):
    parts = {part for path in paths for part in str(path).split("/")}
    return (any(p in STACKED for p in parts), any(_BLOCK.match(p) for p in parts))
  src, dst = layout(source_paths), layout(target_paths)
  return src != dst and (src[0] or src[1]) and (dst[0] or dst[1])
