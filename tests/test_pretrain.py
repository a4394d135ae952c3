"""End to end on real Fashion-MNIST: loss falls, exact resume, SIGTERM, bad input."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, load_config, run_cli, tiny_overrides
from conftest import training_rows as read_metrics


@pytest.mark.slow
def test_loss_falls_and_workdir_is_complete(tmp_path, fmnist_available):
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=40, batch=64)
  config.optim.base_lr = 4e-3
  config.eval_every_steps = 40
  pretrain.train_and_evaluate(config, str(tmp_path))
  losses = [r["loss"] for r in read_metrics(tmp_path)]
  assert len(losses) == 40
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
  for name in ("config.json", "metrics.jsonl", "recon/step_0000040.png"):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "40"
  import mae_jax
  loaded = mae_jax.load(str(tmp_path))
  assert loaded.step == 40 and loaded.config.model.embed_dim == 32
  row = read_metrics(tmp_path)[-1]
  assert {"step", "loss", "lr", "grad_norm", "img_per_s"} <= set(row)


def _constant_lr(config):
  """A schedule that does not depend on the run length, so runs can be compared."""
  config.optim.warmup_steps = 0
  config.optim.min_lr = config.optim.base_lr * config.batch_size / 256
  return config


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_trajectory(tmp_path, fmnist_available):
  from mae_jax.train import pretrain
  full = _constant_lr(tiny_overrides(load_config("pretrain_fmnist"), steps=10))
  pretrain.train_and_evaluate(full, str(tmp_path / "full"))
  first = _constant_lr(tiny_overrides(load_config("pretrain_fmnist"), steps=6))
  pretrain.train_and_evaluate(first, str(tmp_path / "split"))
  pretrain.train_and_evaluate(full, str(tmp_path / "split"))  # resumes at 6
  want = read_metrics(tmp_path / "full")
  got = read_metrics(tmp_path / "split")
  assert [r["step"] for r in got] == list(range(1, 11))  # no step repeated
  np.testing.assert_array_equal([r["loss"] for r in got], [r["loss"] for r in want])
  np.testing.assert_array_equal([r["grad_norm"] for r in got],
                                [r["grad_norm"] for r in want])


@pytest.mark.slow
def test_cli_resume_60_then_80_and_visualize(tmp_path, fmnist_available):
  workdir = str(tmp_path / "w")
  base = ["pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
          *TINY_FLAGS, "--config.checkpoint.every_steps=30"]
  run_cli(*base, "--config.num_train_steps=60", check=True)
  proc = run_cli(*base, "--config.num_train_steps=80", check=True)
  assert "resumed from step 60" in proc.stdout
  steps = [r["step"] for r in read_metrics(workdir)]
  assert steps == list(range(1, 81))
  out = tmp_path / "grid.png"
  run_cli("visualize", f"--workdir={workdir}", f"--out={out}", "--num_images=3", check=True)
  from PIL import Image
  from mae_jax import viz
  image = Image.open(out)
  scale = viz.default_scale(28)   # 4 columns, 3 rows below the column titles
  assert image.size[0] == (4 * 30 + 2) * scale
  assert (3 * 30 + 2) * scale < image.size[1] < (3 * 30 + 2) * scale + 100


@pytest.mark.slow
def test_sigterm_saves_a_restorable_checkpoint(tmp_path, fmnist_available):
  workdir = str(tmp_path / "w")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "mae_jax", "pretrain", "--config=configs/pretrain_fmnist.py",
       f"--workdir={workdir}", *TINY_FLAGS, "--config.num_train_steps=100000",
       "--config.checkpoint.every_steps=100000"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 180
  while time.time() < deadline and not (os.path.exists(metrics) and
                                        os.path.getsize(metrics) > 0):
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "preempted at step" in out
  import mae_jax
  loaded = mae_jax.load(workdir)
  assert 1 <= loaded.step < 100000
  last = read_metrics(workdir)[-1]["step"]
  assert loaded.step >= last


def _assert_one_line_error(proc, pattern):
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("flag,pattern", [
    ("--config.data.image_size=30", "is not divisible by model.patch_size=7"),
    ("--config.model.mask_ratio=1.0", "mask_ratio"),
    ("--config.model.mask_ratio=0.99", "leaves no visible patch"),
    ("--config.model.masking=grid --config.model.mask_ratio=0.5",
     "model.masking='grid' keeps one patch of every 2x2"),
    ("--config.model.name=X", None),  # name alone is a label, not a variant: must run
])
def test_bad_config_values(tmp_path, fmnist_available, flag, pattern):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py",
                 f"--workdir={tmp_path}/w", *TINY_FLAGS, "--config.num_train_steps=1",
                 *flag.split())
  if pattern is None:
    assert proc.returncode == 0, proc.stderr
  else:
    _assert_one_line_error(proc, pattern)


def test_unknown_variant_and_config_key(tmp_path):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py:variant=Q/4",
                 f"--workdir={tmp_path}/w")
  _assert_one_line_error(proc, "unknown model size 'Q'")
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/w",
                 "--config.modle.depth=2")
  _assert_one_line_error(proc, "unknown config key modle.depth (did you mean model.depth?)")


def test_batch_not_divisible_by_devices(tmp_path, fmnist_available):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/w",
                 *TINY_FLAGS, "--config.batch_size=30", "--config.num_train_steps=1",
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  _assert_one_line_error(proc, "batch_size=30 is not divisible by the data-parallel size 4")


def test_missing_dataset(tmp_path):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/w",
                 *TINY_FLAGS, "--config.data.source=idx", f"--config.data.idx_dir={tmp_path}")
  _assert_one_line_error(proc, "apt-get install dataset-fashion-mnist")


def test_truncated_checkpoint(tmp_path, fmnist_available):
  workdir = tmp_path / "w"
  base = ["pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
          *TINY_FLAGS, "--config.checkpoint.every_steps=2"]
  run_cli(*base, "--config.num_train_steps=4", check=True)
  # damage every data file of the newest checkpoint's state
  damaged = 0
  for root, _, files in os.walk(workdir / "checkpoints" / "4" / "state"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 16 and "metadata" not in name:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged
  proc = run_cli(*base, "--config.num_train_steps=6")
  _assert_one_line_error(proc, "cannot be read")
  assert "resume from step 2" in proc.stderr
  assert os.path.isdir(workdir / "checkpoints" / "2")  # the earlier checkpoint is intact


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, fmnist_available):
  from mae_jax.errors import NonFiniteLossError
  from mae_jax.train import pretrain
  config = _constant_lr(tiny_overrides(load_config("pretrain_fmnist"), steps=6))
  pretrain.train_and_evaluate(config, str(tmp_path))
  config = _constant_lr(tiny_overrides(load_config("pretrain_fmnist"), steps=12))
  config.optim.base_lr = 1e30
  config.optim.min_lr = 1e30 * config.batch_size / 256
  with pytest.raises(NonFiniteLossError, match="last good checkpoint: step"):
    pretrain.train_and_evaluate(config, str(tmp_path))
  from mae_jax.checkpoint_io import Checkpointer
  ckpt = Checkpointer(str(tmp_path), with_data=False)
  steps = ckpt.all_steps()
  ckpt.close()
  import mae_jax
  loaded = mae_jax.load(str(tmp_path), step=max(steps))
  import jax
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(loaded.params))


@pytest.mark.parametrize("variant", ["B/16", "H/14"])
def test_imagenet_config_runs_locally(tmp_path, fmnist_available, variant):
  """The ImageNet recipe's own file, shrunk by `runlocal`, trains one step on a CPU."""
  from mae_jax.train import pretrain
  config = load_config("pretrain_imagenet", f"variant={variant},runlocal")
  full = load_config("pretrain_imagenet", f"variant={variant}")
  assert (full.batch_size, full.optim.base_lr, full.optim.warmup_epochs) == (4096, 1.5e-4, 40)
  assert full.model.norm_pix_loss and full.model.mask_ratio == 0.75
  results = pretrain.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 1 and np.isfinite(results["recon_loss"])
