"""The k-NN monitor's cost as a fraction of a pretraining run's time.

Builds the run of a pretraining config (default: the demo), then alternates
``--steps`` training steps with one monitor run (``evaluators.KnnMonitor``) in the
same process, so both see the same machine load, and prints one JSON row per round:
seconds per step, seconds per monitor run, the monitor run in training steps, and
the fraction of the config's whole run (its monitor runs, the first one's
compilation included, against its ``num_train_steps`` steps):

  python benchmarks/monitor_cost.py [--config=configs/pretrain_fmnist.py] [--rounds=2]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/pretrain_fmnist.py")
  parser.add_argument("--steps", type=int, default=40, help="training steps per round")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()

  import jax
  from mae_jax.data import pipeline
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.train import evaluators, loop, optim, pretrain

  spec = importlib.util.spec_from_file_location("config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(None)
  if not c.monitor.every_steps:
    raise SystemExit(f"{args.config} has the monitor off; set monitor.every_steps.")
  total, per_epoch = loop.total_steps(c)
  task = pretrain.PretrainTask(c)
  mesh = mesh_lib.make_mesh(c.mesh)
  schedule = optim.learning_rate_schedule(c.optim, c.batch_size, total, per_epoch)
  built = task.build(mesh, schedule, optim.applied_lr(schedule, c.optim))
  state, train_step = built.state, built.train_step
  monitor = evaluators.KnnMonitor(c, task.model, mesh)
  batches = pipeline.train_iterator(c.data, global_batch=c.batch_size, seed=c.seed,
                                    transform=task.record_transform)

  def train(n: int) -> float:
    nonlocal state
    t0 = time.time()
    for i in range(n):
      state, _ = train_step(state, task.device_batch(next(batches), i, built.batch_shardings))
    jax.block_until_ready(state)
    return (time.time() - t0) / n

  def monitor_seconds() -> tuple[float, float]:
    t0 = time.time()
    top1 = monitor.run(state, 0)["knn_top1"]
    return time.time() - t0, top1

  train(2)  # compiles the step
  first, _ = monitor_seconds()  # compiles the monitor
  runs = len([s for s in range(1, total + 1) if loop.itstime(s, c.monitor.every_steps, total)])
  for _ in range(args.rounds):
    step_s = train(args.steps)
    monitor_s, top1 = monitor_seconds()
    cost = (runs * monitor_s + (first - monitor_s)) / (total * step_s)
    print(json.dumps(dict(
        config=args.config, bank=c.monitor.bank_size, queries=c.monitor.query_size,
        step_s=round(step_s, 4), monitor_s=round(monitor_s, 3),
        first_monitor_s=round(first, 3), monitor_in_steps=round(monitor_s / step_s, 2),
        monitor_runs=runs, total_steps=total, fraction_of_run=round(cost, 4),
        knn_top1=top1)), flush=True)


if __name__ == "__main__":
  main()
