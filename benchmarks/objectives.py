"""Pretraining objectives side by side on Fashion-MNIST, at the same CPU time per run.

Five arms, each the demo's model (``configs/pretrain_fmnist.py``, ViT tiny/4: 128 wide,
4 blocks, 49 patches; decoder 64 wide, 2 blocks; batch 128, 75% random masking):

  pixels            the demo (plain pixels)
  norm_pix          pixels, each patch normalised (MAE's default target)
  hog               MaskFeat's HOG (``model.target=hog``, 4x4 cells)
  teacher           data2vec 2.0's EMA teacher (``model.target=teacher``)
  contrastive       pixels + InfoNCE between two masked views (``model.contrastive``)

Every arm gets the same CPU seconds of pretraining: its CPU seconds per step are
measured first (the jitted step alone, after its compilation, on one pinned core),
and it trains for ``budget / seconds_per_step`` steps (the schedule -- 5% warmup,
cosine -- fits that length). Then, for each pretrained encoder:

  * the demo's quick linear probe (``mae_jax.train.probe``: logistic regression on
    the concatenated patch tokens, ``probe.max_train`` / ``max_test`` images);
  * the k-NN monitor's top-1 (``monitor/knn_top1``: 2,000 training images as bank,
    1,000 test images as queries, k=20);
  * fine-tuning with ``configs/finetune_fmnist.py`` (the 600-step recipe; ``--ft_steps``
    shortens it), top-1 on ``--ft_eval`` test images.

3 seeds per arm; mean and standard deviation. The process pins itself to one CPU core
(``os.sched_setaffinity``), so CPU seconds are wall seconds of one core.

  # the full protocol: the demo's pretraining time (1,200 steps of pixels, ~310 CPU
  # seconds), the demo's probe, the 600-step fine-tune on the whole test set
  # (15 runs of ~15 CPU minutes each)
  python benchmarks/objectives.py --budget=310 --ft_steps=600 --ft_eval=10000
  # what benchmarks/results/objectives.md holds: a reduced, equal budget (~40 min on
  # one shared core)
  python benchmarks/objectives.py --budget=25 --ft_steps=30 --ft_eval=1000 \
      --probe_train=2000 --probe_test=1000

Writes ``benchmarks/results/objectives.{json,md}`` (``--out`` to change; ``--render``
rewrites the ``.md`` from the ``.json``). Finished runs in ``--workdir`` are reused, so
an interrupted run continues (with the same arguments).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paper_trends import load_config  # noqa: E402  (configs/<name>.py get_config)

ARMS = {
    "pixels": dict(),
    "norm_pix": dict(norm_pix_loss=True),
    "hog": dict(target="hog"),
    "teacher": dict(target="teacher"),
    "contrastive": dict(contrastive=0.1),
}
METRICS = ("linear_probe_top1", "knn_top1", "finetune_top1")
FULL_COMMAND = "python benchmarks/objectives.py --budget=310 --ft_steps=600 --ft_eval=10000"

# What the papers report at scale (ViT-B/16 unless said, ImageNet-1k top-1 %), quoted
# from them, not measured here.
PAPERS = [
    ("MAE (He et al., 2021, arXiv:2111.06377), Table 1(d), ViT-L, 800 epochs",
     "pixels 84.9 fine-tune / 73.5 linear; normalised pixels 85.4 / 73.9"),
    ("MaskFeat (Wei et al., 2022, arXiv:2112.09133)",
     "HOG is its best target among those it compares, ahead of pixel colours; ViT-B "
     "84.0 fine-tune after 1600 epochs"),
    ("data2vec 2.0 (Baevski et al., 2023, arXiv:2212.07525)",
     "MAE's accuracy with ViT-B/L in 16.4x less pretraining time, as its abstract says"),
    ("CAN (Mishra et al., 2022, arXiv:2210.16870)",
     "gains over MAE, largest when pretraining on large uncurated data"),
]


def pretrain_config(arm: str, seed: int, steps: int, args):
  config = load_config("pretrain_fmnist", f"steps={steps}")
  config.model.update(**ARMS[arm])
  config.seed = seed
  config.eval_every_steps = 0
  config.checkpoint.update(every_steps=10 * steps, keep=1, async_save=False)
  config.log_every_steps = max(steps // 4, 1)
  config.monitor.update(every_steps=steps)   # once, at the end (the demo's bank/queries)
  config.probe.update(enabled=False, max_train=args.probe_train, max_test=args.probe_test)
  config.compile_cache_dir = os.path.join(args.workdir, "jax_cache")  # compiles once per arm
  return config


def seconds_per_step(arm: str, args, repeats: int = 6) -> float:
  """CPU seconds of one jitted pretraining step of ``arm`` after its compilation."""
  import jax
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax.train import pretrain
  config = pretrain_config(arm, 0, 100, args)
  task = pretrain.PretrainTask(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  built = task.build(mesh, lambda n: 1e-3, lambda n: 1e-3)
  images = np.random.default_rng(0).integers(0, 256, (config.batch_size, 28, 28, 1),
                                             dtype=np.uint8)
  batch = jax.device_put(images, sharding_lib.batch_sharding(mesh))
  state, metrics = built.train_step(built.state, batch)
  jax.block_until_ready(metrics)
  start = time.process_time()
  for _ in range(repeats):
    state, metrics = built.train_step(state, batch)
  jax.block_until_ready(metrics)
  return (time.process_time() - start) / repeats


def run_one(arm: str, seed: int, steps: int, args) -> dict:
  import mae_jax
  from mae_jax.data import pipeline
  from mae_jax.train import classifier, metrics, pretrain, probe
  root = os.path.join(args.workdir, f"{arm}_s{seed}")
  done = os.path.join(root, "result.json")
  if os.path.exists(done):
    return json.load(open(done))
  t0 = time.process_time()
  config = pretrain_config(arm, seed, steps, args)
  results = pretrain.train_and_evaluate(config, os.path.join(root, "pretrain"))
  t1 = time.process_time()
  loaded = mae_jax.load(os.path.join(root, "pretrain"))
  c = loaded.config
  train = pipeline.eval_arrays(c.data, c.data.split, c.probe.max_train)
  test = pipeline.eval_arrays(c.data, c.data.eval_split, c.probe.max_test)
  linear = probe.probe_top1(loaded.model, loaded.params, train, test, 10, c.probe)
  t2 = time.process_time()
  ft = load_config("finetune_fmnist", f"steps={args.ft_steps}")
  ft.init_from = os.path.join(root, "pretrain")
  ft.seed = seed
  ft.data.eval_max_examples = args.ft_eval
  ft.checkpoint.update(every_steps=10 * args.ft_steps, async_save=False)
  ft.compile_cache_dir = os.path.join(args.workdir, "jax_cache")
  tuned = classifier.train_and_evaluate(ft, os.path.join(root, "finetune"))
  t3 = time.process_time()
  losses = [r["loss"] for r in metrics.training_rows(os.path.join(root, "pretrain"))]
  row = dict(arm=arm, seed=seed, pretrain_steps=steps, final_loss=losses[-1],
             linear_probe_top1=linear, knn_top1=results["knn_top1"],
             finetune_top1=tuned["top1"],
             cpu_seconds=dict(pretrain=round(t1 - t0, 1), probe=round(t2 - t1, 1),
                              finetune=round(t3 - t2, 1)))
  with open(done, "w") as f:
    json.dump(row, f, indent=1)
  return row


def summarise(rows: list[dict]) -> dict:
  out = {}
  for arm in ARMS:
    mine = [r for r in rows if r["arm"] == arm]
    if not mine:
      continue
    out[arm] = {}
    for key in METRICS:
      values = [100 * r[key] for r in mine]
      out[arm][key] = dict(mean=statistics.mean(values),
                           std=statistics.stdev(values) if len(values) > 1 else 0.0,
                           values=values)
  return out


def verdict(row: dict, base: dict) -> str:
  """`` (clear)`` when the difference of the means exceeds twice its standard error."""
  n = len(row["values"])
  se = ((row["std"] ** 2 + base["std"] ** 2) / max(n, 1)) ** 0.5
  return " (clear)" if abs(row["mean"] - base["mean"]) > 2 * se else " (within noise)"


def markdown(report: dict) -> str:
  s, a = report["summary"], report["args"]
  pm = lambda d: f"{d['mean']:.1f} ± {d['std']:.1f}"
  lines = [
      "# Pretraining objectives on Fashion-MNIST at equal CPU time",
      "",
      f"Measured {report['date']} on {report['hardware']} (one pinned core), "
      f"{report['total_minutes']:.0f} min in all. The demo's model "
      "(`configs/pretrain_fmnist.py`, ViT tiny/4) pretrained for "
      f"**{a['budget']:g} CPU seconds per run** (steps = budget / the arm's measured "
      "seconds per step), then: the demo's linear probe "
      f"({a['probe_train']} train / {a['probe_test']} test images), the k-NN monitor "
      "(2,000 bank / 1,000 query images, k=20), and fine-tuning with "
      f"`configs/finetune_fmnist.py` for **{a['ft_steps']} steps** (top-1 on "
      f"{a['ft_eval']} test images). Seeds {', '.join(map(str, a['seeds']))}; "
      "mean ± standard deviation over seeds, top-1 in %.",
      "",
      "| objective | CPU s / step | pretraining steps | linear probe | k-NN | fine-tune |",
      "| --- | --- | --- | --- | --- | --- |"]
  for arm, row in s.items():
    lines.append(f"| {arm} | {report['seconds_per_step'][arm]:.3f} | "
                 f"{report['steps'][arm]} | {pm(row['linear_probe_top1'])} | "
                 f"{pm(row['knn_top1'])} | {pm(row['finetune_top1'])} |")
  base = s.get("pixels")
  if base:
    lines += ["", "Against plain pixels (difference of the means, in points; the seeds' "
              "standard deviations above say how much of it is noise):", ""]
    for arm, row in s.items():
      if arm == "pixels":
        continue
      diffs = ", ".join(f"{k.replace('_top1', '').replace('_', ' ')} "
                        f"{row[k]['mean'] - base[k]['mean']:+.1f}{verdict(row[k], base[k])}"
                        for k in METRICS)
      lines.append(f"* {arm}: {diffs}")
    lines += ["", "(clear: the difference is more than twice its standard error over seeds, "
              "sqrt((s1^2 + s2^2) / n); otherwise within noise)"]
  for note in report.get("notes", []):
    lines += ["", note]
  if a["ft_steps"] < 600 or a["budget"] < 310 or a["probe_train"] < 10000:
    lines += ["", "**A reduced protocol**, sized to finish in about 40 minutes on one core "
              "of a shared 2-core machine: the full one (the demo's ~310 CPU seconds of "
              "pretraining, its 10,000 / 10,000-image probe, the 600-step fine-tune on all "
              "10,000 test images) takes about 10-15 CPU minutes per run, 3-4 hours for the 15. "
              f"Here pretraining gets {a['budget']:g} CPU seconds "
              f"({100 * a['budget'] / 310:.0f}% of the demo's), so every encoder is far "
              f"from trained, and {a['ft_steps']} fine-tuning steps are too few for "
              "fine-tuning to say much: read the fine-tune column as a smoke test. "
              "The full protocol: `" + FULL_COMMAND + "`."]
  lines += ["", "## What the papers report at scale (quoted, not measured here)", ""]
  lines += [f"* {who}: {what}." for who, what in PAPERS]
  lines += ["", "Reproduce: `" + report["command"] + "`", ""]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget", type=float, default=45.0,
                      help="CPU seconds of pretraining per run")
  parser.add_argument("--ft_steps", type=int, default=600)
  parser.add_argument("--ft_eval", type=int, default=10000)
  parser.add_argument("--probe_train", type=int, default=10000)
  parser.add_argument("--probe_test", type=int, default=10000)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--workdir", default="/tmp/mae_objectives")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "objectives"))
  parser.add_argument("--cores", type=int, default=1, help="CPU cores to pin to")
  parser.add_argument("--render", action="store_true",
                      help="only rewrite OUT.md from OUT.json")
  args = parser.parse_args()
  if args.render:
    with open(args.out + ".json") as f:
      report = json.load(f)
    with open(args.out + ".md", "w") as f:
      f.write(markdown(report))
    print(markdown(report))
    return
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  logging.basicConfig(level=logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(",")]
  arms = args.arms.split(",")
  start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  speed_file = os.path.join(args.workdir, "seconds_per_step.json")
  speed = json.load(open(speed_file)) if os.path.exists(speed_file) else {}
  for arm in arms:
    if arm not in speed:
      speed[arm] = seconds_per_step(arm, args)
      json.dump(speed, open(speed_file, "w"))
    print(json.dumps({"arm": arm, "cpu_seconds_per_step": speed[arm]}), flush=True)
  steps = {arm: max(20, int(round(args.budget / speed[arm]))) for arm in arms}
  rows = []
  for seed in seeds:
    for arm in arms:
      rows.append(run_one(arm, seed, steps[arm], args))
      print(json.dumps(rows[-1]), flush=True)
  report = dict(
      date=datetime.date.today().isoformat(),
      hardware=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
      total_minutes=(time.time() - start) / 60,
      args=dict(vars(args), seeds=seeds, arms=arms),
      command="python benchmarks/objectives.py " + " ".join(sys.argv[1:]),
      seconds_per_step=speed, steps=steps, rows=rows, summary=summarise(rows))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(args.out + ".md", "w") as f:
    f.write(markdown(report))
  print(markdown(report))


if __name__ == "__main__":
  main()
