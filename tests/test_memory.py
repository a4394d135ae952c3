"""``--dry_run`` and the memory check before the first step: bytes per device from
the sharded state, XLA's estimate of the compiled step, and the verdict."""
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from conftest import TINY_FLAGS, load_config, run_cli, tiny_classifier, tiny_overrides
from mae_jax.errors import ConfigError
from mae_jax.parallel import memory


def _param_count(model, image_shape, **kw):
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(0)}, jnp.zeros(image_shape), **kw))
  return sum(math.prod(a.shape) for a in jax.tree.leaves(nn.unbox(variables["params"])))


def test_device_memory_sources():
  assert memory.table_memory_gib("TPU v5 lite") == 16.0
  assert memory.table_memory_gib("TPU v5p") == 95.0
  assert memory.table_memory_gib("TPU v4") == 32.0
  assert memory.table_memory_gib("TPU v6 lite") == 32.0
  assert memory.table_memory_gib("NVIDIA H100 80GB HBM3") == 80.0
  assert memory.table_memory_gib("NVIDIA A100-SXM4-40GB") == 40.0
  assert memory.table_memory_gib("cpu") is None
  cpu = jax.devices()[0]
  assert memory.device_memory(cpu) == (None, "unknown for cpu")
  assert memory.device_memory(cpu, override_gib=2.0) == (2 * 2 ** 30, "config.device_memory_gib")


def test_pretrain_dry_run_counts_the_param_tree_and_judges_fit():
  from mae_jax.models import registry
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"))
  n = _param_count(registry.build_mae(config), (1, 28, 28, 1))
  rep = pretrain.dry_run(config)
  assert rep["num_params"] == n
  assert rep["param_bytes_per_device"] == 4 * n          # float32, one device
  # AdamW: two float32 moments per parameter, plus the int32 step counter(s)
  assert 8 * n <= rep["opt_state_bytes_per_device"] <= 8 * n + 64
  assert rep["peak_bytes_per_device"] > rep["state_bytes_per_device"]
  assert rep["fits"] is None and "no verdict" in memory.describe(rep)
  memory.check(rep)  # unknown memory: no error

  config.device_memory_gib = 1000.0
  assert pretrain.dry_run(config)["fits"] is True
  config.device_memory_gib = 1e-6
  small = pretrain.dry_run(config)
  assert small["fits"] is False and "DOES NOT FIT" in memory.describe(small)
  with pytest.raises(ConfigError, match="train step needs about .* per device"):
    memory.check(small)


def test_finetune_dry_run_reads_no_data():
  from mae_jax.train import classifier
  config = tiny_classifier("finetune")
  config.data.update(name="no_such_dataset", source="tfds")
  model = classifier.build_classifier(config)
  n = _param_count(model, (1, 28, 28, 1))
  rep = classifier.dry_run(config)
  assert rep["task"] == "finetune" and rep["num_params"] == n
  assert rep["param_bytes_per_device"] == 4 * n


def test_cli_dry_run_prints_numbers_and_leaves_no_workdir(tmp_path):
  workdir = tmp_path / "w"
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
                 "--dry_run", "--config.mesh.data=1", *TINY_FLAGS, check=True)
  lines = proc.stdout.strip().splitlines()
  assert any(l.startswith("peak estimate per device:") for l in lines), proc.stdout
  report = json.loads(lines[-1])
  assert report["param_bytes_per_device"] == 4 * report["num_params"]
  assert not os.path.exists(workdir)


def test_run_that_does_not_fit_stops_before_the_first_step(tmp_path, fmnist_available):
  workdir = tmp_path / "w"
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
                 "--config.device_memory_gib=0.000001", "--config.num_train_steps=2",
                 *TINY_FLAGS)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "train step needs about" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (workdir / "config.json").exists()
  assert not (workdir / "metrics.jsonl").exists()
