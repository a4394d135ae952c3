"""Every speed figure of one accelerator, in one command, into one results file.

  python benchmarks/device_suite.py              # one GPU: 8 minutes at most (--budget_s)
  python benchmarks/device_suite.py --science    # Fashion-MNIST: MAE vs scratch, <= 5 min
  python benchmarks/device_suite.py --smoke      # the same code paths, tiny shapes, CPU

writes one JSON line per measurement to ``benchmarks/results/<device>_<date>.jsonl``
(``--out_dir``; ``--smoke`` writes to a temporary folder unless given one). Every row
carries the device, the driver, the library versions, the git commit, the suite mode
and the part that made it. The parts, in order (a part that fails or runs out of its
time leaves a row with ``error`` and the suite goes on):

  env             device, memory, driver, platform and library versions
  images_b16      MAE pretraining step, ViT-B/16, batch 256, bf16: img/s, MFU, peak
                  memory, compile time for attention cudnn and xla; Hugging Face
                  ViTMAEForPreTraining and the official MAE code's structure
                  (``official_mae.py``, eager) in the same process
                  (``pretrain_throughput.py``)
  images_l16      the same for ViT-L/16, scan_layers off and on (first attention)
  compile_cache   the images_b16 step compiled again in a fresh process reading the
                  persistent compilation cache that images_b16 wrote (cold vs warm)
  video           ViT-B, 16x224x224 clips, 2x16x16 tubelets, tube masking 0.9, batch 32,
                  against Hugging Face VideoMAEForPreTraining
  vit_h_fit       ViT-H/14, batch 256, bf16, remat=full: does it fit? XLA's memory
                  analysis of the step compiled from shapes (the --dry_run estimate),
                  then the real state and steps (the allocator's peak, img/s)
  input_pipeline  ImageNet-style JPEG decode + RandomResizedCrop + flip on every core
                  at once (one pinned process per core, ``input_pipeline.py``): img/s
                  summed; paths needing grain/TFDS record "skipped: not installed"
  torch_compile   the official structure under torch.compile, ViT-B/16 and ViT-L/16,
                  each beside an HF row of the same process
  plain_jax       the trainer's step against a plain JAX step of the same math
                  (``plain_jax.py``), ViT-B/16, batch 256, bf16

``--science``: the ``science`` part only (``fmnist_science.py``): the demo's MAE
pretrained for as many epochs as fit, then fine-tuned from it and from a random
init over 3 seeds, beside logistic regression on the raw pixels.

Each part runs in a process of its own with a time limit (``--isolate``, the default
outside ``--smoke``), so a crash, an out-of-memory abort or a hang costs one part; the
whole run stops at ``--budget_s`` (parts left then are recorded as skipped). Needs jax, flax, optax (torch, timm, transformers
for the peers); no ml_collections, TFDS, TensorFlow or grain.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LIBRARIES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
             "orbax-checkpoint", "numpy", "torch", "torchvision", "timm", "transformers",
             "grain", "tensorflow", "tensorflow-datasets", "ml-collections")

# (part, seconds it may take in the full mode); the order is the order they run in
PARTS = (("env", 60), ("images_b16", 110), ("images_l16", 150), ("compile_cache", 45),
         ("video", 60), ("vit_h_fit", 100), ("input_pipeline", 40), ("torch_compile", 150),
         ("plain_jax", 50))
SCIENCE_PARTS = (("env", 60), ("science", 300))
TIMING = ["--steps=10", "--repeats=3", "--warmup=2"]
# --smoke: one step, models one block deep, XLA's cheapest code generation
SMOKE_TIMING = ["--steps=1", "--repeats=1", "--warmup=0",
                "--dims=embed_dim=32,depth=1,num_heads=2,decoder_embed_dim=32,decoder_depth=1,"
                "decoder_num_heads=2"]
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


# ------------------------------------------------------------------ what runs where


def images_calls(ctx, part: str) -> list[list[str]]:
  """``pretrain_throughput.py`` calls of an images part (the first has the peers)."""
  if ctx.smoke:
    shape = ["--image_size=28", "--channels=1", "--batch=8", "--dtype=float32",
             "--attention=xla"] + SMOKE_TIMING
    return {"images_b16": [["--variant=tiny/4", "--hf", "--official=eager"] + shape],
            "images_l16": [["--variant=tiny/7", "--scan_layers=true", "--hf"] + shape,
                           ["--variant=tiny/7", "--scan_layers=false", "--no-hf"] + shape],
            "torch_compile": [["--variant=tiny/4,tiny/7", "--hf", "--official=compile",
                               "--torch_compile_backend=eager", "--no_mae_jax"] + shape]}[part]
  shape = ["--batch=256", "--dtype=bfloat16"] + TIMING
  first, *rest = ctx.attention.split(",")
  if part == "images_b16":
    return [["--variant=B/16", f"--attention={ctx.attention}", "--hf", "--official=eager"]
            + shape]
  if part == "images_l16":   # scan on/off with the first attention, the others scan off
    return [["--variant=L/16", f"--attention={first}", "--scan_layers=false,true", "--hf",
             "--official=eager"] + shape] + (
        [["--variant=L/16", f"--attention={','.join(rest)}", "--no-hf"] + shape]
        if rest else [])
  # torch.compile compiles for a minute or more per model: a part of its own, after the
  # mae_jax rows are safe, with the HF row of its own process to compare with
  return [["--variant=B/16,L/16", "--hf", "--official=compile", "--no_mae_jax"] + shape]


def video_args(ctx) -> list[str]:
  if ctx.smoke:
    return ["--variant=tiny/8", "--image_size=32", "--num_frames=4", "--tubelet=2",
            "--mask_ratio=0.9", "--batch=4", "--dtype=float32", "--attention=xla",
            "--hf"] + SMOKE_TIMING
  return ["--variant=B/16", "--image_size=224", "--num_frames=16", "--tubelet=2",
          "--mask_ratio=0.9", "--batch=32", "--dtype=bfloat16", f"--attention={ctx.attention}",
          "--hf"] + TIMING


def vit_h_args(ctx) -> list[str]:
  if ctx.smoke:
    return ["--variant=tiny/7", "--image_size=28", "--channels=1", "--batch=8",
            "--dtype=float32"] + SMOKE_TIMING
  return ["--variant=H/14", "--batch=256", "--dtype=bfloat16"] + TIMING


def plain_args(ctx) -> list[str]:
  if ctx.smoke:
    return ["--case=images", "--variant=tiny/8", "--image_size=32", "--batch=4",
            "--dtype=float32", "--attention=xla"] + SMOKE_TIMING
  return ["--case=images", "--batch=256", "--dtype=bfloat16",
          f"--attention={ctx.attention.split(',')[0]}"] + TIMING


# ------------------------------------------------------------------ the parts


def _commit() -> tuple[str | None, bool | None]:
  try:
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=20)
    if head.returncode:
      return None, None
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=20)
    return head.stdout.strip(), bool(dirty.stdout.strip())
  except (OSError, subprocess.TimeoutExpired):
    return None, None


def _driver() -> str | None:
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
  except (OSError, subprocess.TimeoutExpired, IndexError):
    return None


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def provenance() -> dict:
  """What every row carries besides the device: driver, versions, commit."""
  commit, dirty = _commit()
  return dict(driver=_driver(), versions=versions(), commit=commit, commit_dirty=dirty)


def part_env(ctx) -> None:
  import jax
  import pretrain_throughput as pt
  from mae_jax.parallel import memory
  device = jax.devices()[0]
  limit, source = memory.device_memory(device)
  ctx.emit(dict(dict(impl="environment", host_cpu=pt._cpu_model()), **pt.device_description(),
                platform_version=getattr(device.client, "platform_version", None),
                device_memory_gib=limit / 2 ** 30 if limit else None,
                device_memory_source=source, host_cores=os.cpu_count(),
                jax_devices=[str(d) for d in jax.devices()]))


def _compile_cache(ctx) -> None:
  """JAX's persistent cache in the suite's own folder: empty at the suite's start."""
  import jax
  from mae_jax import compile_cache
  if ctx.smoke:  # tiny programs compile in under JAX's default 1 s threshold
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compile_cache.configure(ctx.cache_dir)


def part_images(ctx, part: str) -> None:
  import pretrain_throughput as pt
  _compile_cache(ctx)
  for argv in images_calls(ctx, part):
    pt.main(argv + [f"--out={ctx.rows_file}", f"--label={part}"])
  # a call without a peer row: its ratio against the part's HF row of the same shapes
  rows = read_rows(ctx.rows_file)
  key = lambda r: (r.get("model"), r.get("batch"), r.get("dtype"))
  hf = {key(r): r for r in rows if r.get("impl") == "hf_vitmae" and "error" not in r}
  for r in rows:
    if r.get("impl") == "mae_jax" and "error" not in r and "ratio_vs_hf" not in r \
        and key(r) in hf:
      r.update(ratio_vs_hf=r["img_per_s"] / hf[key(r)]["img_per_s"],
               ratio_vs_hf_note="HF row of another call in the same part")
  with open(ctx.rows_file, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def part_images_b16(ctx) -> None:
  part_images(ctx, "images_b16")


def part_images_l16(ctx) -> None:
  part_images(ctx, "images_l16")


def part_torch_compile(ctx) -> None:
  part_images(ctx, "torch_compile")


def part_compile_cache(ctx) -> None:
  """The first mae_jax setting of images_b16 compiled again, now from the cache."""
  import jax
  import pretrain_throughput as pt
  _compile_cache(ctx)
  argv = images_calls(ctx, "images_b16")[0]
  cold = next((r for r in ctx.previous_rows
               if r.get("part") == "images_b16" and r.get("impl") == "mae_jax"
               and "error" not in r), None)
  if cold is None:
    raise RuntimeError("images_b16 left no mae_jax row to compare with")
  args = pt.parse_args(argv + ["--warmup=0"])
  if not ctx.isolate:
    jax.clear_caches()  # same process: only the persistent cache may help
  entries = len(os.listdir(ctx.cache_dir)) if os.path.isdir(ctx.cache_dir) else 0
  run = pt.MaeJaxRun(args, args.variant, cold["batch"], cold["dtype"], cold["attention"],
                     cold["remat"], cold["moments_dtype"], cold["scan_layers"])
  ctx.emit(dict(impl="mae_jax", model=cold["model"], variant=cold["variant"],
                batch=cold["batch"], dtype=cold["dtype"], attention=cold["attention"],
                compile_cold_s=cold["compile_s"], compile_warm_s=run.compile_s,
                first_step_cold_s=cold["first_step_s"], first_step_warm_s=run.first_step_s,
                warm_speedup=cold["compile_s"] / run.compile_s, cache_entries=entries,
                fresh_process=ctx.isolate, **pt.device_description()))
  run.close()


def part_video(ctx) -> None:
  import pretrain_throughput as pt
  _compile_cache(ctx)
  pt.main(video_args(ctx) + [f"--out={ctx.rows_file}", "--label=video"])


def part_vit_h_fit(ctx) -> None:
  """ViT-H/14 with remat: XLA's estimate from shapes, then a real state and steps."""
  import jax
  import pretrain_throughput as pt
  from mae_jax.models import registry
  from mae_jax.parallel import memory
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax.train import optim
  from mae_jax.train import step as step_lib
  _compile_cache(ctx)
  args = pt.parse_args(vit_h_args(ctx))
  attention = "xla" if ctx.smoke else ctx.attention.split(",")[0]
  batch, dtype = int(args.batch), args.dtype
  base = dict(impl="mae_jax", model=pt.model_name(args.variant), variant=args.variant,
              batch=batch, dtype=dtype, attention=attention, remat="full",
              **pt.device_description())
  # 1. the dry run: state and step from shapes only (nothing allocated)
  config = pt.make_config(args, args.variant, dtype, attention, "full")
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "model": 1})
  model = registry.build_mae(config)
  schedule = optim.learning_rate_schedule(config.optim, batch, 10_000)
  tx = optim.adamw(config.optim, schedule)
  shape = registry.input_shape(config, batch)
  state, shardings = step_lib.create_train_state(model, tx, mesh, (1, *shape[1:]), 0,
                                                 abstract=True)
  step = step_lib.make_train_step(model, tx, mesh, shardings, schedule, seed=0)
  images = jax.ShapeDtypeStruct(shape, "float32", sharding=sharding_lib.batch_sharding(mesh))
  start = time.perf_counter()
  rep = memory.report(state, step.compile(state, images))
  ctx.emit(dict(base, check="dry_run", compile_s=time.perf_counter() - start,
                fits=rep["fits"], peak_gib=(rep["peak_bytes_per_device"] or 0) / 2 ** 30,
                device_memory_gib=(rep["device_memory_bytes"] or 0) / 2 ** 30 or None,
                fraction_of_memory=rep["fraction_of_memory"], num_params=rep["num_params"],
                state_gib=rep["state_bytes_per_device"] / 2 ** 30,
                memory_source="XLA memory analysis of the step compiled from shapes"))
  # 2. for real: the state allocated and steps run (an out-of-memory error = no)
  try:
    run = pt.MaeJaxRun(args, args.variant, batch, dtype, attention, "full", "float32")
    elapsed = run.window(args.steps)
    result = run.result()
    run.close()
    ctx.emit(dict(base, check="allocated", fits=True, img_per_s=batch * args.steps / elapsed,
                  device_peak_mem_gib=result["device_peak_mem_gib"],
                  peak_gib=result["peak_mem_gib"], loss=result["loss"],
                  compile_s=result["compile_s"],
                  memory_source="device allocator's peak (memory_stats)"))
  except Exception as e:  # noqa: BLE001 -- the answer to "does it fit" may be an OOM
    text = f"{type(e).__name__}: {str(e).splitlines()[0][:400] if str(e) else ''}"
    oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    ctx.emit(dict(base, check="allocated", fits=False if oom else None,
                  **({} if oom else {"error": text}), detail=text))


def part_input_pipeline(ctx) -> None:
  """Each available path on every core at once: one pinned worker per core."""
  import input_pipeline as ip
  cores = sorted(os.sched_getaffinity(0))
  if ctx.smoke:
    cores, paths, num_images, batch, num_batches = cores[:1], ["pil_numpy"], 8, 4, 1
  else:
    paths, num_images, batch, num_batches = ["torchvision", "pil_numpy"], 256, 64, 4
  root = tempfile.mkdtemp(prefix="suite_jpeg_")
  try:
    info = ip.write_dataset(root, num_images, tfds=False)
    for path in ("grain", "grain_fast"):
      if not ip._available(path):
        ctx.emit(dict(impl="input_pipeline", path=path, skipped="not installed (needs "
                      "grain and tensorflow_datasets)"))
    for path in paths:
      if not ip._available(path):
        ctx.emit(dict(impl="input_pipeline", path=path, skipped="not installed"))
        continue
      start = time.perf_counter()
      procs = [subprocess.Popen(
          [sys.executable, ip.__file__, f"--worker={path}", f"--data_dir={root}",
           f"--batch={batch}", f"--num_batches={num_batches}", f"--core={core}"],
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for core in cores]
      outs = [p.communicate() for p in procs]
      wall = time.perf_counter() - start
      failed = [err for p, (_, err) in zip(procs, outs) if p.returncode]
      if failed:
        raise RuntimeError(f"{path}: {failed[0].strip().splitlines()[-1][:400]}")
      rows = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
      ctx.emit(dict(impl="input_pipeline", path=path, cores=len(cores),
                    img_per_s=sum(r["img_per_s"] for r in rows),
                    img_per_s_per_core=[r["img_per_s"] for r in rows],
                    img_per_cpu_s_per_core=[r["img_per_cpu_s"] for r in rows],
                    images=sum(r["images"] for r in rows), batch=batch, wall_s=wall,
                    image_size=224, dataset=info, host_cpu=ip._cpu_model(),
                    load_avg_1m=os.getloadavg()[0]))
  finally:
    shutil.rmtree(root, ignore_errors=True)


def part_plain_jax(ctx) -> None:
  import plain_jax
  plain_jax.main(plain_args(ctx) + [f"--out={ctx.rows_file}", "--label=plain_jax"])


def part_science(ctx) -> None:
  import fmnist_science
  # 15% of the part's time is kept for compiling and evaluating
  fmnist_science.run(ctx.emit, smoke=ctx.smoke, idx_dir=ctx.fmnist_dir,
                     budget_s=0.85 * ctx.part_budget_s)


FUNCTIONS = {name: globals()[f"part_{name}"] for name, _ in PARTS + SCIENCE_PARTS}


# ------------------------------------------------------------------ the runner


class Context:
  """What a part gets: the settings, where its rows go, the rows of earlier parts."""

  def __init__(self, args, rows_file: str, previous_rows: list[dict], part_budget_s: float):
    self.smoke, self.isolate = args.smoke, args.isolate
    self.attention, self.cache_dir = args.attention, args.cache_dir
    self.fmnist_dir = args.fmnist_dir
    self.rows_file, self.previous_rows = rows_file, previous_rows
    self.part_budget_s = part_budget_s

  def emit(self, row: dict) -> None:
    with open(self.rows_file, "a") as f:
      f.write(json.dumps(row) + "\n")


def read_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:   # a line cut short by a killed process
          pass
  return rows


def run_isolated(cmd: list[str], timeout_s: float) -> str | None:
  """Runs ``cmd`` in a process group of its own; None if it exited 0, else what went
  wrong (the group is killed at ``timeout_s``)."""
  log = tempfile.TemporaryFile(mode="w+")
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    code = proc.wait(timeout=max(timeout_s, 1.0))
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"timeout: stopped after {timeout_s:.0f} s"
  if code == 0:
    return None
  log.seek(0)
  lines = [line.strip() for line in log.read().splitlines() if line.strip()]
  return f"exit status {code}: {lines[-1][:500] if lines else ''}"


def slug(device: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_") or "unknown"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--smoke", action="store_true",
                 help="tiny shapes, the same code paths; CPU, well under a minute")
  p.add_argument("--science", action="store_true",
                 help="the Fashion-MNIST science part instead of the speed parts")
  p.add_argument("--parts", default="", help="comma-separated subset of the parts")
  p.add_argument("--budget_s", type=float, default=0,
                 help="the whole run's time limit in seconds (default 480; --science 360); "
                      "a part gets the smaller of its own limit and what is left")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="each part in its own process with a time limit (default: on, "
                      "off with --smoke)")
  p.add_argument("--attention", default="cudnn,xla",
                 help="mae_jax attention settings of the image and video parts")
  p.add_argument("--fmnist_dir", default="/usr/share/datasets/fashion-mnist",
                 help="Fashion-MNIST IDX files (--science; default: where Debian's "
                      "dataset-fashion-mnist package puts them)")
  p.add_argument("--out_dir", default="", help="default benchmarks/results "
                 "(--smoke: a temporary folder)")
  p.add_argument("--out", default="", help="the results file (default: "
                 "OUT_DIR/<device>_<date>.jsonl)")
  p.add_argument("--label", default="")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--rows_file", default="", help=argparse.SUPPRESS)
  p.add_argument("--previous", default="", help=argparse.SUPPRESS)
  p.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
  p.add_argument("--part_budget_s", type=float, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.isolate is None:
    args.isolate = not args.smoke
  return args


def worker(args) -> None:
  """One part in this process (``--worker=PART``, started by the runner)."""
  ctx = Context(args, args.rows_file, read_rows(args.previous), args.part_budget_s)
  FUNCTIONS[args.worker](ctx)


def main(argv=None) -> str:
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return ""
  if args.smoke:   # one core: no thread pool (torch's spins) fights a busy machine
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
  started, today = time.time(), datetime.date.today().isoformat()
  # --smoke covers every part, the science one included
  table = SCIENCE_PARTS if args.science else PARTS + SCIENCE_PARTS[1:] if args.smoke else PARTS
  chosen = [p for p in args.parts.split(",") if p] or [name for name, _ in table]
  unknown = sorted(set(chosen) - {name for name, _ in table})
  if unknown:
    raise SystemExit(f"unknown part(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(name for name, _ in table)}")
  parts = [(name, budget) for name, budget in table if name in chosen]
  budget = args.budget_s or (600 if args.smoke else 360 if args.science else 480)
  mode = "science" if args.science else "smoke" if args.smoke else "full"
  work = tempfile.mkdtemp(prefix="device_suite_")
  args.cache_dir = os.path.join(work, "compile_cache")
  out_dir = args.out_dir or (work if args.smoke else os.path.join(HERE, "results"))
  command = "python benchmarks/device_suite.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  common = dict(suite=mode, date=today, command=command, label=args.label or None,
                **provenance())
  device, kept, pending, out = None, [], [], args.out

  def record(rows: list[dict], part: str) -> None:
    """Rows to stdout and to the results file (named once the env part saw the device)."""
    nonlocal device, out
    for row in rows:
      row = {**row, "part": part, **common}
      if part == "env" and "error" not in row:
        device = row["device"]
      row.setdefault("device", device)
      kept.append(row)
      pending.append(row)
      print(json.dumps(row), flush=True)
    if not out and (device or part != "env"):
      os.makedirs(out_dir, exist_ok=True)
      out = os.path.join(out_dir, f"{slug(device or 'unknown')}_{today}.jsonl")
    if out:
      with open(out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in pending)
      pending.clear()

  for name, part_budget in parts:
    left = budget - (time.time() - started)
    if left < 5:
      record([dict(skipped="suite budget spent", budget_s=budget)], name)
      continue
    limit = min(part_budget, left) if not args.smoke else left
    rows_file = os.path.join(work, f"{name}.jsonl")
    previous = os.path.join(work, "previous.jsonl")
    with open(previous, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    t0 = time.time()
    if args.isolate:
      cmd = [sys.executable, os.path.abspath(__file__), f"--worker={name}",
             f"--rows_file={rows_file}", f"--previous={previous}",
             f"--cache_dir={args.cache_dir}", f"--attention={args.attention}",
             f"--fmnist_dir={args.fmnist_dir}", f"--part_budget_s={limit}"]
      cmd += ["--isolate"] + (["--smoke"] if args.smoke else [])
      error = run_isolated(cmd, limit)
    else:
      error = None
      try:
        FUNCTIONS[name](Context(args, rows_file, kept, limit))
      except Exception as e:  # noqa: BLE001 -- one part's failure is one row
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}"
    rows = read_rows(rows_file)
    if error:
      rows.append(dict(error=error, seconds=time.time() - t0))
    for row in rows:
      row.setdefault("part_seconds", round(time.time() - t0, 1))
    record(rows, name)
  if pending:   # no part ran
    record([], "env")
  for name in os.listdir(work):   # the parts' scratch files; the results file may be here
    path = os.path.join(work, name)
    if path != out:
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  print(f"{len(kept)} rows -> {out} ({time.time() - started:.0f} s)", file=sys.stderr)
  return out


if __name__ == "__main__":
  main()
