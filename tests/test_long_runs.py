"""Long runs that look after themselves: recovery from a non-finite step
(``optim.on_nonfinite=recover``), the persistent compilation cache, and where a run's
wall time goes."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from conftest import load_config, run_cli, tiny_overrides, training_rows, TINY_FLAGS
from mae_jax.train.recovery import FAULT_ENV

PEAK_LR = 1.5e-3 * 32 / 256  # configs/pretrain_fmnist.py base_lr at batch 32


def _recovering(steps: int, **recover):
  """A tiny pretraining at a constant lr (runs of any length follow one trajectory),
  a checkpoint every 2 steps, recovering from non-finite steps."""
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=steps)
  config.optim.update(warmup_steps=0, min_lr=PEAK_LR, on_nonfinite="recover")
  config.optim.recover.update(recover)
  config.checkpoint.every_steps = 2
  return config


def _params(workdir):
  import mae_jax
  return jax.tree.map(np.asarray, mae_jax.load(str(workdir)).params)


def _events(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "event" in r]


@pytest.mark.slow
def test_an_injected_nan_is_recovered_logged_and_resumed_exactly(tmp_path, monkeypatch,
                                                                 fmnist_available):
  from mae_jax.train import pretrain
  monkeypatch.setenv(FAULT_ENV, "5")
  recover = dict(skip_batches=1, lr_factor=0.5, cooldown_steps=2)
  pretrain.train_and_evaluate(_recovering(8, **recover), str(tmp_path / "full"))

  # one event: step 5 went back to the checkpoint of step 4 and dropped 2 batches
  assert _events(tmp_path / "full") == [
      {"step": 5, "event": "recovered", "cause": "loss", "restored_step": 4,
       "batches_dropped": 2, "recoveries": 1}]
  rows = training_rows(tmp_path / "full")
  assert [r["step"] for r in rows] == list(range(1, 9))  # the replayed steps once each
  assert all(np.isfinite(r["loss"]) for r in rows)
  lrs = [r["lr"] for r in rows]  # halved for the 2 steps from the checkpoint
  np.testing.assert_allclose(lrs, [PEAK_LR] * 4 + [PEAK_LR / 2] * 2 + [PEAK_LR] * 2,
                             rtol=1e-6)
  full = _params(tmp_path / "full")
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(full))

  # the replayed steps drew new masks and read other batches: a run without the fault
  # differs from step 5 on
  monkeypatch.setenv(FAULT_ENV, "")
  pretrain.train_and_evaluate(_recovering(8, **recover), str(tmp_path / "clean"))
  clean = training_rows(tmp_path / "clean")
  np.testing.assert_array_equal([r["loss"] for r in clean[:4]], [r["loss"] for r in rows[:4]])
  assert clean[4]["loss"] != rows[4]["loss"]

  # interrupted after the recovery (ends at step 6), then resumed: the same run
  monkeypatch.setenv(FAULT_ENV, "5")
  pretrain.train_and_evaluate(_recovering(6, **recover), str(tmp_path / "split"))
  pretrain.train_and_evaluate(_recovering(8, **recover), str(tmp_path / "split"))
  split = training_rows(tmp_path / "split")
  assert [r["step"] for r in split] == list(range(1, 9))
  np.testing.assert_array_equal([r["loss"] for r in split], [r["loss"] for r in rows])
  jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "split"), full)
  assert len(_events(tmp_path / "split")) == 1


@pytest.mark.slow
def test_nonfinite_steps_stop_by_default_and_after_max_events(tmp_path, monkeypatch,
                                                              fmnist_available):
  """One error line: at the first fault without ``recover``; after ``max_events``
  recoveries with it. No checkpoint past the last good step is written."""
  monkeypatch.setenv(FAULT_ENV, "3,5,7")
  base = ("pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
          "--config.num_train_steps=8", "--config.checkpoint.every_steps=2")
  stopped = run_cli(*base, f"--workdir={tmp_path / 'stop'}")
  errors = [l for l in stopped.stderr.splitlines() if l.startswith("error:")]
  assert stopped.returncode == 2 and len(errors) == 1, stopped.stderr[-2000:]
  assert "at step 3" in errors[0] and "optim.on_nonfinite=recover" in errors[0]
  assert sorted(os.listdir(tmp_path / "stop" / "checkpoints")) == ["2"]

  gave_up = run_cli(*base, f"--workdir={tmp_path / 'recover'}",
                    "--config.optim.on_nonfinite=recover",
                    "--config.optim.recover.max_events=2")
  errors = [l for l in gave_up.stderr.splitlines() if l.startswith("error:")]
  assert gave_up.returncode == 2 and len(errors) == 1, gave_up.stderr[-2000:]
  assert "at step 7" in errors[0] and "2 recoveries made" in errors[0]
  assert [e["step"] for e in _events(tmp_path / "recover")] == [3, 5]
  assert max(int(s) for s in os.listdir(tmp_path / "recover" / "checkpoints")) == 6


def test_recover_settings_are_checked_where_given(tmp_path):
  for override, pattern in (("--config.optim.on_nonfinite=retry", "must be one of"),
                            ("--config.optim.recover.max_events=0", "max_events=0"),
                            ("--config.optim.recover.lr_factor=2.0", "lr_factor=2.0")):
    proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py",
                   f"--workdir={tmp_path / 'w'}", override)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and pattern in errors[0], proc.stderr
  assert not (tmp_path / "w").exists()


def test_time_parts_add_up_to_the_wall_time(tmp_path, fmnist_available):
  """Each row's seconds per part since the previous row; the run's totals (eval.json)
  add up to its wall time within 5%; goodput is the steps' share of it."""
  from mae_jax.train import metrics, pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=8)
  result = pretrain.train_and_evaluate(config, str(tmp_path))
  total = result["time"]
  parts = sum(total[k] for k in metrics.TIME_PARTS)
  assert abs(parts - total["wall"]) <= 0.05 * total["wall"], total
  assert total["goodput"] == pytest.approx(total["step"] / total["wall"], abs=1e-3)
  for part in ("setup", "compile", "step", "checkpoint", "eval", "log"):
    assert total[part] > 0, (part, total)
  rows = training_rows(tmp_path)
  for part in metrics.TIME_PARTS:
    per_row = [r[f"time/{part}"] for r in rows]
    assert min(per_row) >= 0 and sum(per_row) <= total[part] + 1e-3, (part, per_row)
  assert rows[0]["time/compile"] > 0 and rows[0]["time/setup"] > 0
  assert all(r["time/compile"] == 0 and r["time/setup"] == 0 for r in rows[1:])
  with open(tmp_path / "eval.json") as f:
    assert json.load(f)["time"] == total


@pytest.mark.slow
def test_a_corrupt_compilation_cache_changes_nothing(tmp_path, fmnist_available):
  """Three processes: no cache; a cold cache (filled); the same cache with every entry
  overwritten by garbage. The same losses each time, no traceback; the corrupt
  entries are read (JAX warns) and compiled again."""
  cache = tmp_path / "cache"
  args = ("pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
          "--config.num_train_steps=3")
  env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  run_cli(*args, f"--workdir={tmp_path / 'none'}", "--config.compile_cache_dir=",
          env=env, check=True)
  run_cli(*args, f"--workdir={tmp_path / 'cold'}", f"--config.compile_cache_dir={cache}",
          env=env, check=True)
  entries = [p for p in glob.glob(str(cache / "**"), recursive=True) if os.path.isfile(p)]
  assert entries  # the run filled the cache
  for path in entries:
    with open(path, "wb") as f:
      f.write(b"\x00garbage, not a compiled program" * 8)
  corrupt = run_cli(*args, f"--workdir={tmp_path / 'corrupt'}",
                    f"--config.compile_cache_dir={cache}", env=env, check=True)
  assert "Traceback" not in corrupt.stderr
  assert "Error reading persistent compilation cache entry" in corrupt.stderr
  losses = [[r["loss"] for r in training_rows(tmp_path / name)]
            for name in ("none", "cold", "corrupt")]
  assert losses[0] == losses[1] == losses[2] and len(losses[0]) == 3


def test_compile_cache_dir_resolution(tmp_path, monkeypatch):
  from mae_jax import compile_cache
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve("") is None
  assert compile_cache.resolve("gs://b/cache") == "gs://b/cache"
  told = jax.config.jax_compilation_cache_dir  # the test run's own cache
  assert compile_cache.resolve("auto") == (told or str(tmp_path / "xdg" / "mae_jax" / "jax"))
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve("auto") == str(tmp_path / "env")
