"""The demo's representation against its honest baselines, over seeds.

For each pretrained demo workdir (``mae-jax pretrain --config=configs/pretrain_fmnist.py``,
one per seed), the demo's quick probe (``mae_jax.train.probe``: logistic regression,
same images, same steps) on:

  * the MAE encoder, features ``mean`` / ``cls`` / ``patches`` (concatenated tokens);
  * a random-init encoder of the same architecture, the same three features;
  * the raw pixels (standardised).

Prints one JSON row per workdir and a summary (mean ± std over workdirs) per probe:

  python benchmarks/demo_probe.py --workdirs=W0,W1,W2 [--out=FILE.json]

To produce the workdirs:

  for s in 0 1 2; do mae-jax pretrain --config=configs/pretrain_fmnist.py \\
      --workdir=/tmp/demo_s$s --config.seed=$s; done
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def probe_row(workdir: str) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import mae_jax
  from mae_jax.data import pipeline
  from mae_jax.train import probe
  from mae_jax.train.step import init_rngs
  loaded = mae_jax.load(workdir)
  c = loaded.config
  train = pipeline.eval_arrays(c.data, c.data.split, c.probe.max_train)
  test = pipeline.eval_arrays(c.data, c.data.eval_split, c.probe.max_test)
  classes = int(train[1].max()) + 1
  fit = lambda fx, tx: probe.logistic_regression_top1(
      fx, train[1], tx, test[1], classes, steps=c.probe.steps, lr=c.probe.lr,
      weight_decay=c.probe.weight_decay)
  random = nn.unbox(jax.jit(loaded.model.init)(init_rngs(c.seed + 1),
                                               jnp.asarray(train[0][:1]))["params"])
  row = {"workdir": workdir, "seed": int(c.seed), "step": loaded.step,
         "train_images": int(len(train[1])), "test_images": int(len(test[1]))}
  t0 = time.time()
  for name, params in (("mae", loaded.params), ("random_init", random)):
    for kind in probe.FEATURES:
      feats = [probe.encoder_features(loaded.model, params, x, kind=kind)
               for x in (train[0], test[0])]
      row[f"{name}_{kind}"] = fit(*feats)
  row["raw_pixels"] = fit(train[0].reshape(len(train[0]), -1),
                          test[0].reshape(len(test[0]), -1))
  row["seconds"] = round(time.time() - t0, 1)
  return row


def summary(rows: list[dict]) -> dict:
  keys = [k for k in rows[0] if k.startswith(("mae_", "random_init_", "raw_"))]
  out = {}
  for k in keys:
    values = [r[k] for r in rows]
    out[k] = {"mean": statistics.mean(values),
              "std": statistics.stdev(values) if len(values) > 1 else 0.0,
              "values": values}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated demo workdirs")
  parser.add_argument("--out", default="", help="also write the rows and summary here")
  args = parser.parse_args()
  rows = []
  for workdir in args.workdirs.split(","):
    rows.append(probe_row(workdir))
    print(json.dumps(rows[-1]), flush=True)
  result = {"rows": rows, "summary": summary(rows)}
  print(json.dumps({"summary": result["summary"]}, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
