"""Compile time, XLA memory and collective bytes of the pretraining step, from shapes only.

On the CPU with fake devices (``--xla_force_host_platform_device_count``, default 8)
nothing is allocated: the train state is ``jax.ShapeDtypeStruct``s with their
shardings (``create_train_state(..., abstract=True)``), and the trainer's own step
(``mae_jax.train.step.make_train_step``) is lowered and compiled for them. Per
setting (variant x mesh x ``scan_layers`` x remat x batch) one JSON row:

* ``lower_s``, ``compile_s``: tracing + lowering, and XLA compilation (wall clock);
  ``compile_cpu_s``: the CPU time the compilation took (steadier on a shared host);
* ``memory``: ``compiled.memory_analysis()`` per device (arguments, outputs,
  temporaries, aliased) and ``peak`` = arguments + outputs + temporaries - aliased;
* ``collectives``: bytes per step of ``all-gather``, ``reduce-scatter``,
  ``all-reduce`` (and ``all-to-all``, ``collective-permute``) read from the compiled
  HLO text: operand sizes, each instruction counted as often as it runs (a loop
  body's by the loop's known trip count, so scanned and unscanned models compare).

The rows with both layouts of one setting also get ``compile_s_ratio_scanned`` and
``compile_cpu_s_ratio_scanned`` (scanned / unscanned, same run).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/compile_memory.py \\
      --variants=B/16,L/16,H/14 --meshes=data,fsdp --scan=both --remat=none --batch=16
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                   # pretrain_throughput.py (its Config)
sys.path.insert(1, os.path.dirname(HERE))  # mae_jax, when run from a checkout


def fake_cpu_devices(count: int = 8) -> None:
  """``count`` CPU devices unless XLA_FLAGS says otherwise (before jax starts)."""
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={count}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64)\[([\d,]*)\]")
_OP = re.compile(r"^\s*%?[\w.\-]+ = (.*?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_WHILE = re.compile(r"\bwhile\(.*\bbody=%?([\w.\-]+)")
_CALLS = re.compile(r"\b(?:calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_MESH_GROUP = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_IOTA_GROUP = re.compile(r"replica_groups=\[[\d,]*?(\d+)\]<=")
_LIST_GROUP = re.compile(r"replica_groups=\{\{([\d,]*)\}")


def shape_bytes(text: str) -> int:
  """Bytes of every ``dtype[dims]`` shape in ``text``."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
  return total


def group_size(line: str) -> int:
  """Devices in one replica group of a collective instruction."""
  mesh = _MESH_GROUP.search(line)
  if mesh:
    sizes = dict((k.strip("' "), int(v)) for k, v in
                 (item.split("=") for item in mesh.group(1).split(",")))
    n = 1
    for axis in filter(None, (a.strip("' ") for a in mesh.group(2).split(","))):
      n *= sizes.get(axis, 1)
    return n
  iota = _IOTA_GROUP.search(line)
  if iota:
    return int(iota.group(1))
  listed = _LIST_GROUP.search(line)
  return len(listed.group(1).split(",")) if listed else 1


def collective_bytes(hlo: str) -> dict:
  """``{kind: operand bytes per device per run of the entry computation}``.

  The compiled text names operands without shapes, so the operand size comes from
  the result: ``all-gather`` result / group size, ``reduce-scatter`` result x group
  size, the others the result. An instruction in a ``while`` body counts once per
  iteration (``known_trip_count``).
  """
  comps, entry, current = {}, None, None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      head = line.split()
      current = (head[1] if head[0] == "ENTRY" else head[0]).lstrip("%")
      comps[current] = []
      if head[0] == "ENTRY":
        entry = current
    elif current is not None and line.startswith(" "):
      comps[current].append(line)
  totals = {k: 0 for k in COLLECTIVES}

  def walk(name: str, times: int, depth: int = 0):
    if name not in comps or depth > 64:
      return
    for line in comps[name]:
      op = _OP.match(line)
      if op:
        result, kind = shape_bytes(op.group(1)), op.group(2)
        factor = {"all-gather": 1 / group_size(line),
                  "reduce-scatter": group_size(line)}.get(kind, 1)
        totals[kind] += int(times * result * factor)
      loop = _WHILE.search(line)
      if loop:
        trip = _TRIP.search(line)
        walk(loop.group(1), times * (int(trip.group(1)) if trip else 1), depth + 1)
      for callee in _CALLS.findall(line):
        walk(callee, times, depth + 1)

  walk(entry, 1)
  return totals


def build(variant, batch, scan, remat, dtype, image_size, mesh_axes):
  import jax
  import jax.numpy as jnp
  from pretrain_throughput import Config
  from mae_jax.models import registry
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax.train import optim
  from mae_jax.train import step as step_lib
  model_cfg = Config(registry.variant_dims(variant), norm_pix_loss=True, mask_ratio=0.75,
                     dtype=dtype, param_dtype="float32", attention="xla", remat=remat,
                     scan_layers=scan)
  config = Config(model=model_cfg, data=Config(image_size=image_size, channels=3),
                  optim=Config(base_lr=1.5e-4, min_lr=0.0, warmup_epochs=0, warmup_steps=10,
                               weight_decay=0.05, b1=0.9, b2=0.95, clip_grad_norm=0.0,
                               grad_accum_steps=1, moments_dtype="float32"), seed=0)
  mesh = mesh_lib.make_mesh(mesh_axes)
  model = registry.build_mae(config)
  tx = optim.adamw(config.optim, lambda count: 1e-4)
  state, shardings = step_lib.create_train_state(model, tx, mesh, (1, image_size, image_size, 3),
                                                 abstract=True)
  step = step_lib.make_train_step(model, tx, mesh, shardings, lambda s: 1e-4, seed=0)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32,
                                sharding=sharding_lib.batch_sharding(mesh))
  return state, step, images, mesh


MESHES = {"data": dict(data=-1, fsdp=1, model=1), "fsdp": dict(data=1, fsdp=-1, model=1)}


def measure(variant, batch, scan, remat, dtype, image_size, mesh_name) -> dict:
  import jax
  from mae_jax.parallel import memory
  from mae_jax.parallel import sharding as sharding_lib
  t0 = time.perf_counter()
  state, step, images, mesh = build(variant, batch, scan, remat, dtype, image_size,
                                    MESHES[mesh_name])
  with jax.set_mesh(mesh), sharding_lib.logical_rules():
    lowered = step.jitted.lower(state, images)
  t1, c1 = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  t2, c2 = time.perf_counter(), time.process_time()
  return {
      "bench": "compile_memory", "variant": variant, "batch": batch, "scan_layers": scan,
      "remat": remat, "dtype": dtype, "image_size": image_size, "mesh": mesh_name,
      "num_devices": jax.device_count(), "device": jax.devices()[0].device_kind,
      "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
      "compile_cpu_s": round(c2 - c1, 2),  # this process's CPU time (shared machines)
      "memory": memory.step_memory(compiled),
      "state_bytes_per_device": memory.tree_bytes_per_device(state),
      "collectives": collective_bytes(compiled.as_text()),
  }


def markdown(rows: list[dict]) -> str:
  """The table of ``docs/scaling.md`` from result rows (MB = 1e6 bytes)."""
  mb = lambda n: f"{n / 1e6:,.0f}"
  lines = ["| model | mesh | remat | batch | scan | compile s (CPU s) | scanned / unscanned "
           "(CPU) | peak MB / device | temp MB | all-gather MB / step | all-reduce MB / step "
           "| reduce-scatter MB / step |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    c = r["collectives"]
    ratio = r.get("compile_cpu_s_ratio_scanned")
    lines.append(
        f"| {r['variant']} | {r['mesh']}={r['num_devices']} | {r['remat']} | {r['batch']} | "
        f"{'on' if r['scan_layers'] else 'off'} | {r['compile_s']:,.0f} ({r['compile_cpu_s']:,.0f}) "
        f"| {'' if ratio is None else f'{ratio:.2f}'} | {mb(r['memory']['peak'])} | "
        f"{mb(r['memory']['temp'])} | {mb(c['all-gather'])} | {mb(c['all-reduce'])} | "
        f"{mb(c['reduce-scatter'])} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="B/16,L/16,H/14")
  parser.add_argument("--meshes", default="data,fsdp")
  parser.add_argument("--scan", default="both", choices=["both", "on", "off"])
  parser.add_argument("--remat", default="none")
  parser.add_argument("--batch", default="16", help="global batch sizes (comma-separated)")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--out", default=os.path.join(
      HERE, "results", f"compile_memory_cpu_{datetime.date.today().isoformat()}.jsonl"))
  parser.add_argument("--label", default="")
  parser.add_argument("--table", default="", help="print the markdown table of a results "
                      "file instead of measuring")
  args = parser.parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(markdown([json.loads(line) for line in f if line.strip()]))
    return
  fake_cpu_devices()
  scans = {"both": (False, True), "on": (True,), "off": (False,)}[args.scan]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  for variant in args.variants.split(","):
    for mesh_name in args.meshes.split(","):
      for remat in args.remat.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
          rows = []
          for scan in scans:
            row = measure(variant, batch, scan, remat, args.dtype, args.image_size, mesh_name)
            row["label"] = args.label
            row["load_avg_1m"] = round(os.getloadavg()[0], 2)
            rows.append(row)
          if len(rows) == 2:
            for key in ("compile_s", "compile_cpu_s"):
              ratio = rows[1][key] / max(rows[0][key], 1e-9)
              for row in rows:
                row[f"{key}_ratio_scanned"] = round(ratio, 3)
          with open(args.out, "a") as f:
            for row in rows:
              print(json.dumps(row), flush=True)
              f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
