"""The one table mapping logical axis names to mesh axes, and sharding helpers.

Parameters name ``embed``, ``mlp``, ``heads``, ``kv``, ``vocab`` (and ``layers``,
the leading axis of a scanned model's stacked blocks, always replicated); activations
name ``batch``, ``length``, ``act_embed``, ``act_mlp``, ``act_heads``. FSDP shards
parameters along ``embed`` over ``fsdp``; tensor parallelism (Megatron style)
shards ``mlp``/``heads`` over ``model``: qkv and fc1 are column parallel, proj and
fc2 row parallel. The batch is split over ``data`` and ``fsdp``.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "model"),
    ("act_heads", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", None),
    ("classes", None),
    ("layers", None),   # the stacked-block axis of scanned models (model.scan_layers)
)


def logical_rules():
  """Context manager activating the rules for ``nn.with_logical_constraint``."""
  return nn.logical_axis_rules(LOGICAL_AXIS_RULES)


def shardings_of(boxed_tree, mesh: Mesh):
  """NamedShardings for a tree of (possibly logically boxed) abstract values.

  Raises a ConfigError naming the parameter and the mesh axis when a dimension
  is not divisible by the mesh axes it is split over.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)
  check_divisible(nn.unbox(boxed_tree), shardings)
  return shardings


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def check_divisible(abstract_tree, shardings) -> None:
  """ConfigError for the first array dimension its mesh axes do not divide."""
  from mae_jax.errors import ConfigError

  def check(path, leaf, sharding):
    if not isinstance(sharding, NamedSharding):
      return
    for dim, (size, entry) in enumerate(zip(leaf.shape, sharding.spec)):
      axes = _axes(entry)
      parts = math.prod(sharding.mesh.shape[a] for a in axes)
      if parts > 1 and size % parts:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        split = " x ".join(f"mesh.{a}={sharding.mesh.shape[a]}" for a in axes)
        raise ConfigError(
            f"{name} has size {size} in dimension {dim}, which {split} does not divide; "
            "choose model widths/heads divisible by the fsdp and model axes, or smaller "
            "mesh.fsdp/mesh.model.")

  jax.tree_util.tree_map_with_path(check, abstract_tree, shardings)


def batch_sharding(mesh: Mesh, ndim: int = 4) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_batch_rows(sharding: NamedSharding, global_batch: int,
                       process_index: int | None = None) -> tuple[int, ...]:
  """Rows of a global batch held by one process's devices under ``sharding``.

  Ascending: the order in which ``jax.make_array_from_process_local_data``
  places the rows of the process-local array. Processes whose devices are
  replicas (a ``model`` axis spanning hosts) get the same rows.
  """
  pid = jax.process_index() if process_index is None else process_index
  shape = (global_batch,) + (1,) * (len(sharding.spec) - 1 if sharding.spec else 0)
  blocks = set()
  for device, index in sharding.devices_indices_map(shape).items():
    if device.process_index == pid:
      start, stop, _ = index[0].indices(global_batch)
      blocks.add((start, stop))
  rows = sorted({r for start, stop in blocks for r in range(start, stop)})
  return tuple(rows)


def bytes_per_device(tree) -> dict:
  """Bytes of a tree of global arrays held by each device (addressable shards)."""
  out: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      out[str(shard.device)] = out.get(str(shard.device), 0) + shard.data.nbytes
  return out


def planned_bytes_per_device(abstract_tree, shardings) -> int:
  """Largest per-device bytes of a tree laid out with ``shardings``, without allocating.

  ``abstract_tree``: arrays or ``ShapeDtypeStruct``s; ``shardings``: the matching tree
  of ``NamedSharding``s (e.g. from :func:`shardings_of`).
  """
  per_device: dict = {}

  def add(leaf, sharding):
    shape = tuple(leaf.shape)
    nbytes = math.prod(sharding.shard_shape(shape)) * np.dtype(leaf.dtype).itemsize
    for device in sharding.device_set:
      per_device[device.id] = per_device.get(device.id, 0) + nbytes

  jax.tree.map(add, abstract_tree, shardings)
  return max(per_device.values()) if per_device else 0
