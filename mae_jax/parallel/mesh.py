"""The device mesh ``(data, fsdp, model)`` built from ``config.mesh``.

``-1`` in one axis means "all remaining devices". Axis types are ``Auto``: the
train step states its shardings explicitly (``jax.jit`` in/out shardings) and the
model adds logical constraints; nothing relies on sharding-in-types.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from mae_jax.errors import ConfigError

AXES = ("data", "fsdp", "model")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  sizes = [int(mesh_config[a]) for a in AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ConfigError(f"at most one of mesh.data/fsdp/model may be -1, got {sizes}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh sizes must be positive or -1, got {dict(zip(AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"mesh {dict(zip(AXES, sizes))} does not divide the {num_devices} "
                        "devices; choose axis sizes whose product divides the device count.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(
        f"mesh data={sizes[0]} x fsdp={sizes[1]} x model={sizes[2]} = {math.prod(sizes)} "
        f"devices, but {num_devices} are available; set one axis to -1 or make the "
        "product equal the device count.")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  dcn_data = int(mesh_config.get("dcn_data", 1) or 1)
  if dcn_data > 1:
    # Multi-slice TPU: the data axis spans slices (DCN), the rest stays in a slice (ICI).
    from jax.experimental import mesh_utils
    if shape[0] % dcn_data:
      raise ConfigError(f"mesh.data={shape[0]} is not divisible by mesh.dcn_data={dcn_data}.")
    ici = (shape[0] // dcn_data, shape[1], shape[2])
    device_array = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
    return Mesh(device_array, AXES, axis_types=(AxisType.Auto,) * 3)
  return jax.make_mesh(shape, AXES, devices=devices, axis_types=(AxisType.Auto,) * 3)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(batch_size: int, mesh: Mesh):
  dp = data_parallel_size(mesh)
  if batch_size % dp:
    raise ConfigError(f"batch_size={batch_size} is not divisible by the data-parallel size "
                      f"{dp} (mesh data x fsdp); use a multiple of {dp}.")
