"""The k-NN representation monitor of pretraining (``evaluators.KnnMonitor``).

Its top-1 equals a NumPy weighted k-NN on features extracted separately
(``probe.encoder_features``) on one device and, in a subprocess, on 8 fake CPU
devices under several meshes; it rises over a short real pretraining run; bad
``monitor`` settings are refused.
"""
import json
import os
import sys

import numpy as np
import pytest

from conftest import TINY_FLAGS, eight_device_report, load_config, run_cli, tiny_overrides

MESHES = [(8, 1, 1), (2, 2, 2)]
CASES = [dict(k=20, temperature=0.07), dict(k=3, temperature=0.5)]


def numpy_knn_top1(bank, bank_labels, queries, query_labels, k, temperature):
  """Weighted k-NN (Wu et al. 2018, DINO's eval_knn): cosine similarity, the k most
  similar bank rows vote for their label with weight exp(sim / T)."""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit(queries.astype(np.float64)) @ unit(bank.astype(np.float64)).T
  nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  weights = np.exp(np.take_along_axis(sims, nearest, 1) / temperature)
  votes = np.zeros((len(queries), int(bank_labels.max()) + 1))
  np.add.at(votes, (np.arange(len(queries))[:, None], bank_labels[nearest]), weights)
  return float((votes.argmax(1) == query_labels).mean())


def monitor_config(k=20, temperature=0.07, bank=100, queries=60):
  """Bank and queries not multiples of the batch (32): padding rows are exercised."""
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=2)
  config.monitor.update(every_steps=1, bank_size=bank, query_size=queries, k=k,
                        temperature=temperature)
  return config


def monitor_and_reference(config, mesh_shape=None) -> dict:
  """The monitor's top-1 on a fresh (sharded) train state, and NumPy's on the same
  params' features computed on one device from host arrays."""
  import jax
  from mae_jax.data import pipeline
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.train import evaluators, optim, pretrain, probe
  if mesh_shape:
    config.mesh.update(data=mesh_shape[0], fsdp=mesh_shape[1], model=mesh_shape[2])
  task = pretrain.PretrainTask(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, 2, 1)
  state = task.build(mesh, schedule, optim.applied_lr(schedule, config.optim)).state
  top1 = evaluators.KnnMonitor(config, task.model, mesh).run(state, 0)["knn_top1"]

  m = config.monitor
  bank = pipeline.eval_arrays(config.data, config.data.split, m.bank_size)
  queries = pipeline.eval_arrays(config.data, config.data.eval_split, m.query_size)
  params = jax.device_get(state.params)
  features = lambda images: probe.encoder_features(task.model, params, images, kind="mean")
  reference = numpy_knn_top1(features(bank[0]), bank[1], features(queries[0]), queries[1],
                             m.k, m.temperature)
  return {"monitor": top1, "reference": reference, "params_sharded": any(
      len(leaf.sharding.device_set) > 1 and not leaf.sharding.is_fully_replicated
      for leaf in jax.tree.leaves(state.params))}


# ----------------------------------------------------------------- the 8-device worker


def worker() -> dict:
  import jax
  assert jax.device_count() == 8, jax.devices()
  return {f"{'x'.join(map(str, shape))}/k{case['k']}":
          monitor_and_reference(monitor_config(**case), shape)
          for shape in MESHES for case in CASES}


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print(json.dumps(worker()))
  sys.exit(0)


# ----------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c['k']}")
def test_monitor_equals_numpy_knn_on_one_device(case, fmnist_available):
  result = monitor_and_reference(monitor_config(**case))
  assert result["monitor"] == pytest.approx(result["reference"], abs=1e-9), result
  assert 0.3 < result["monitor"] < 1.0, result  # features that tell classes apart


@pytest.fixture(scope="module")
def eight_devices(fmnist_available):
  return eight_device_report(__file__, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda m: "x".join(map(str, m)))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c['k']}")
def test_monitor_equals_numpy_knn_on_eight_devices(eight_devices, mesh_shape, case):
  result = eight_devices[f"{'x'.join(map(str, mesh_shape))}/k{case['k']}"]
  assert result["monitor"] == pytest.approx(result["reference"], abs=1e-9), result
  if mesh_shape[1] > 1:
    assert result["params_sharded"], "fsdp should shard the params the monitor reads"


@pytest.mark.slow
def test_monitor_rises_over_a_short_pretraining(tmp_path, fmnist_available):
  """200 steps of a 1-block, 32-wide MAE (patch 4); the monitor at steps 50..200.

  Measured on this setting: 0.456, 0.470, 0.528, 0.524, after 0.516 for the
  random-init encoder (bank 1,000, 500 queries). At budgets this small the
  mean-pooled features first fall below the random encoder's (whose features still
  carry the pixels' similarity) and then climb back, so the test compares the first
  and the last evaluation of the run, not the run against step 0.
  """
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist", "steps=200"), steps=200, batch=64)
  config.model.update(embed_dim=32, depth=1, num_heads=2, patch_size=4)
  config.optim.base_lr = 6e-3
  config.log_every_steps = 50
  config.checkpoint.every_steps = 200
  config.monitor.update(every_steps=50, bank_size=1000, query_size=500)
  result = pretrain.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  knn = {r["step"]: r["monitor/knn_top1"] for r in rows if "monitor/knn_top1" in r}
  assert sorted(knn) == [50, 100, 150, 200], knn
  assert result["knn_top1"] == knn[200]
  print(f"k-NN monitor: {knn}")
  assert knn[200] >= knn[50] + 0.03, knn


@pytest.mark.parametrize("key,value,pattern", [
    ("every_steps", -1, "monitor.every_steps=-1 must be an integer >= 0"),
    ("k", 0, "monitor.k=0 must be an integer >= 1"),
    ("bank_size", 10, "monitor.bank_size=10 is smaller than monitor.k=20"),
    ("query_size", 0, "monitor.query_size=0 must be an integer >= 1"),
    ("temperature", 0.0, "monitor.temperature=0.0 must be a number > 0"),
])
def test_bad_monitor_settings_are_refused(key, value, pattern):
  from mae_jax import config_schema
  from mae_jax.errors import ConfigError
  config = load_config("pretrain_fmnist")
  config.monitor.every_steps = 10
  config_schema.check(config)
  config.monitor[key] = value
  with pytest.raises(ConfigError, match=pattern):
    config_schema.check(config)
  if key == "bank_size":  # off: the bank is not built
    config.monitor.every_steps = 0
    config_schema.check(config)


def test_bad_monitor_setting_is_one_error_line_before_any_work(tmp_path):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/w",
                 *TINY_FLAGS, "--config.num_train_steps=1", "--config.monitor.k=0")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "monitor.k=0 must be an integer >= 1" in lines[0], lines
  assert not os.path.exists(tmp_path / "w" / "config.json")
