"""Will a train step fit? Device memory, XLA's estimate of a compiled step, a verdict.

``mae-jax pretrain|finetune|linprobe --dry_run`` prints ``report``; every real run
checks the same estimate before its first step and stops with one line when the
step clearly does not fit (``check``), instead of an out-of-memory crash minutes
into a pod job.

* Device memory: ``config.device_memory_gib`` when set (> 0); else what the runtime
  reports (``device.memory_stats()["bytes_limit"]``, GPUs and TPUs: the allocator's
  real limit); else the per-device table below by ``device_kind``; else unknown (the
  CPU: no verdict).
* The step's peak is XLA's per-device estimate for the compiled SPMD program:
  arguments + outputs + temporaries - donated (aliased) buffers
  (``compiled.memory_analysis()``).
"""
from __future__ import annotations

import math

import jax

from mae_jax.errors import ConfigError

GIB = 2 ** 30

# HBM per JAX device (a TPU chip, or one GPU), GiB, matched by substring of
# ``device_kind``; the first match wins, so specific names come first.
DEVICE_MEMORY_GIB = (
    ("TPU v4", 32.0),
    ("TPU v5 lite", 16.0),
    ("TPU v5e", 16.0),
    ("TPU v5p", 95.0),
    ("TPU v5", 95.0),
    ("TPU v6 lite", 32.0),
    ("TPU v6e", 32.0),
    ("H200", 140.0),
    ("H100", 80.0),
    ("A100-SXM4-40GB", 40.0),
    ("A100-PCIE-40GB", 40.0),
    ("A100", 80.0),
)


def table_memory_gib(device_kind: str) -> float | None:
  for name, gib in DEVICE_MEMORY_GIB:
    if name.lower() in device_kind.lower():
      return gib
  return None


def device_memory(device=None, override_gib: float = 0.0) -> tuple[int | None, str]:
  """``(bytes per device or None, where the number comes from)``."""
  device = device or jax.devices()[0]
  if override_gib and override_gib > 0:
    return int(override_gib * GIB), "config.device_memory_gib"
  try:
    stats = device.memory_stats() or {}
  except Exception:  # some backends (the CPU) raise instead of returning None
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), "runtime (memory_stats bytes_limit)"
  gib = table_memory_gib(device.device_kind)
  if gib is not None:
    return int(gib * GIB), f"table ({device.device_kind})"
  return None, f"unknown for {device.device_kind}"


def tree_bytes_per_device(abstract_tree, shardings=None) -> int:
  """Largest per-device bytes of arrays (or ``ShapeDtypeStruct``s) as sharded."""
  from mae_jax.parallel.sharding import planned_bytes_per_device
  if shardings is None:
    shardings = jax.tree.map(lambda a: a.sharding, abstract_tree)
  return planned_bytes_per_device(abstract_tree, shardings)


def step_memory(compiled) -> dict:
  """Per-device bytes of a compiled step (``memory_analysis``) and its peak estimate."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  out = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def report(state, compiled, override_gib: float = 0.0) -> dict:
  """Bytes per device of params, optimizer state and the step's peak; the verdict.

  ``state``: the train state (arrays or ``ShapeDtypeStruct``s with shardings);
  ``fits`` is ``None`` where the device memory is unknown.
  """
  device = jax.devices()[0]
  limit, source = device_memory(device, override_gib)
  step = step_memory(compiled)
  out = {
      "device_kind": device.device_kind,
      "num_devices": jax.device_count(),
      "num_params": int(sum(math.prod(a.shape) for a in jax.tree.leaves(state.params))),
      "param_bytes_per_device": tree_bytes_per_device(state.params),
      "opt_state_bytes_per_device": tree_bytes_per_device(state.opt_state),
      "state_bytes_per_device": tree_bytes_per_device(state),
      "step": step,
      "peak_bytes_per_device": step.get("peak"),
      "device_memory_bytes": limit,
      "device_memory_source": source,
  }
  peak = out["peak_bytes_per_device"]
  out["fits"] = None if limit is None or peak is None else bool(peak <= limit)
  out["fraction_of_memory"] = (None if limit is None or peak is None
                               else round(peak / limit, 4))
  return out


def _gib(n) -> str:
  if n is None:
    return "?"
  return f"{n / GIB:,.2f} GiB" if n >= GIB // 10 else f"{n / 2 ** 20:,.2f} MiB"


def describe(rep: dict) -> str:
  """Human-readable lines of ``report``."""
  step = rep.get("step") or {}
  if rep["fits"] is None:
    verdict = (f"no verdict: device memory {rep['device_memory_source']} (set "
               "--config.device_memory_gib=N to check against N GiB)")
  else:
    verdict = (f"{'fits' if rep['fits'] else 'DOES NOT FIT'}: "
               f"{100 * rep['fraction_of_memory']:.0f}% of {_gib(rep['device_memory_bytes'])} "
               f"({rep['device_memory_source']})")
  return "\n".join([
      f"devices: {rep['num_devices']} x {rep['device_kind']}",
      f"parameters: {rep['num_params']:,}",
      f"params per device: {_gib(rep['param_bytes_per_device'])}",
      f"optimizer state per device: {_gib(rep['opt_state_bytes_per_device'])}",
      f"train state per device: {_gib(rep['state_bytes_per_device'])}",
      f"compiled step per device: arguments {_gib(step.get('argument'))}, outputs "
      f"{_gib(step.get('output'))}, temporaries {_gib(step.get('temp'))}, donated "
      f"{_gib(step.get('alias'))}",
      f"peak estimate per device: {_gib(rep['peak_bytes_per_device'])}",
      f"verdict: {verdict}",
  ])


def check(rep: dict) -> None:
  """One ``ConfigError`` line when the step clearly does not fit the device memory."""
  if rep["fits"] is False:
    raise ConfigError(
        f"the train step needs about {_gib(rep['peak_bytes_per_device'])} per device "
        f"(XLA's estimate) but a {rep['device_kind']} has {_gib(rep['device_memory_bytes'])} "
        f"({rep['device_memory_source']}); lower batch_size, set --config.model.remat=full, "
        "shard with --config.mesh.fsdp=N, or use bfloat16 (--config.model.dtype); "
        "`--dry_run` prints the numbers.")

