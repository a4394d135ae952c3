"""Time to the first step of a resumed run, with a cold and with a warm compilation cache.

A preempted run restarts in a new process and compiles its train step again unless
JAX's persistent compilation cache (``compile_cache_dir``, ``mae_jax.compile_cache``)
holds it. Per setting, in one run of this script, each run a new ``mae-jax
pretrain`` process:

1. a first run trains 3 steps into a workdir, with an empty cache folder A (it fills
   A); its checkpoints of steps 2 and 3 are then deleted: a run preempted after step 1;
2. a copy of that workdir resumes (the same command) with another empty folder B
   (cold);
3. another copy resumes with folder A (warm).

For 2. and 3. (steps 2 and 3) one JSON row each: ``to_first_step_s`` (the run's own
``time/setup`` + ``time/compile`` of its first row: mesh, data, model, restore, the
memory check's compilation and the first step), ``compile_s`` (``time/compile``
alone), ``step_s`` (the next step, ``time/step``), ``compile_only_s`` (``compile_s -
step_s``: the compilation without the first step's own work) and ``process_s`` (the
whole process, imports and the final evaluation included); the warm row also has
``to_first_step_ratio_cold_over_warm`` and ``compile_only_ratio_cold_over_warm``
(same machine, same run).

Settings: ``demo`` (``configs/pretrain_fmnist.py``: tiny/4, batch 128, 28x28) and
``B/16`` (ViT-B/16 MAE at 224, batch 8, float32, Fashion-MNIST resized: only the
shapes matter here).

  python benchmarks/resume_compile.py [--settings=demo,B/16] [--out=FILE.jsonl]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUIET = ["--config.probe.enabled=False", "--config.monitor.every_steps=0",
         "--config.eval_every_steps=0", "--config.num_recon_images=2",
         "--config.log_every_steps=1", "--config.checkpoint.every_steps=1",
         "--config.checkpoint.async_save=False", "--config.checkpoint.keep=5"]
SETTINGS = {
    "demo": ["--config=configs/pretrain_fmnist.py"],
    "B/16": ["--config=configs/pretrain_imagenet.py:variant=B/16,runlocal",
             "--config.model.embed_dim=768", "--config.model.depth=12",
             "--config.model.num_heads=12", "--config.model.decoder_embed_dim=512",
             "--config.model.decoder_depth=8", "--config.model.decoder_num_heads=16",
             "--config.data.image_size=224", "--config.batch_size=8"],
}


def pretrain(setting: str, workdir: str, steps: int, cache: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, "-m", "mae_jax", "pretrain", *SETTINGS[setting], *QUIET,
         f"--workdir={workdir}", f"--config.num_train_steps={steps}",
         f"--config.compile_cache_dir={cache}"]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "loss" in r]
  first, second = rows[-2:]  # the resumed run's two steps
  return {"process_s": round(seconds, 2),
          "compile_s": round(first["time/compile"], 2),
          "step_s": round(second["time/step"], 2),
          "compile_only_s": round(first["time/compile"] - second["time/step"], 2),
          "to_first_step_s": round(first["time/setup"] + first["time/compile"], 2)}


def measure(setting: str, root: str) -> list[dict]:
  warm, cold = os.path.join(root, "cache_a"), os.path.join(root, "cache_b")
  base = os.path.join(root, "first")
  pretrain(setting, base, 3, warm)
  for step in ("2", "3"):  # preempted after step 1
    shutil.rmtree(os.path.join(base, "checkpoints", step))
  rows = []
  for name, cache in (("cold", cold), ("warm", warm)):
    workdir = os.path.join(root, name)
    shutil.copytree(base, workdir)
    rows.append({"setting": setting, "cache": name, **pretrain(setting, workdir, 3, cache)})
  cold_row, warm_row = rows
  warm_row["to_first_step_ratio_cold_over_warm"] = round(
      cold_row["to_first_step_s"] / warm_row["to_first_step_s"], 2)
  warm_row["compile_only_ratio_cold_over_warm"] = round(
      cold_row["compile_only_s"] / max(warm_row["compile_only_s"], 1e-3), 2)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--settings", default="demo,B/16")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  import jax
  common = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__,
            "backend": os.environ.get("JAX_PLATFORMS", "cpu")}
  for setting in args.settings.split(","):
    with tempfile.TemporaryDirectory(prefix="mae_resume_") as root:
      for row in measure(setting, root):
        line = json.dumps({**row, **common})
        print(line, flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
  main()
