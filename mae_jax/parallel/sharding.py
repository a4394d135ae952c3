"""The one table mapping logical axis names to mesh axes, and sharding helpers.

Parameters name ``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``; activations
name ``batch``, ``length``, ``act_embed``, ``act_mlp``, ``act_heads``. FSDP shards
parameters along ``embed`` over ``fsdp``; tensor parallelism (Megatron style)
shards ``mlp``/``heads`` over ``model``: qkv and fc1 are column parallel, proj and
fc2 row parallel. The batch is split over ``data`` and ``fsdp``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
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
)


def logical_rules():
  """Context manager activating the rules for ``nn.with_logical_constraint``."""
  return nn.logical_axis_rules(LOGICAL_AXIS_RULES)


def shardings_of(boxed_tree, mesh: Mesh):
  """NamedShardings for a tree of (possibly logically boxed) abstract values."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh, ndim: int = 4) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def bytes_per_device(tree) -> dict:
  """Bytes of a tree of global arrays held by each device (addressable shards)."""
  out: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      out[str(shard.device)] = out.get(str(shard.device), 0) + shard.data.nbytes
  return out
