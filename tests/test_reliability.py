"""Nothing lost: Ctrl-C saves and exits 130, a second run on a workdir in use is
refused, a lock left by a killed run is taken over."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_FLAGS, run_cli


def _start(workdir, *extra):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.Popen(
      [sys.executable, "-m", "mae_jax", "pretrain", "--config=configs/pretrain_fmnist.py",
       f"--workdir={workdir}", *TINY_FLAGS, "--config.num_train_steps=100000",
       "--config.checkpoint.every_steps=100000", *extra],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_metrics(proc, workdir):
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 180
  while time.time() < deadline and not (os.path.exists(metrics) and
                                        os.path.getsize(metrics) > 0):
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, fmnist_available):
  workdir = str(tmp_path / "w")
  proc = _start(workdir)
  _wait_for_metrics(proc, workdir)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, (out[-2000:], err[-2000:])
  assert "Traceback" not in err and "interrupted at step" in err, err[-2000:]
  import mae_jax
  step = mae_jax.load(workdir).step
  assert step >= 1
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))
  assert not os.path.exists(os.path.join(workdir, ".lock"))
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
                 *TINY_FLAGS, f"--config.num_train_steps={step + 2}", check=True)
  assert f"resumed from step {step}" in proc.stdout


def test_a_workdir_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path,
                                                                 fmnist_available):
  workdir = str(tmp_path / "w")
  first = _start(workdir)
  _wait_for_metrics(first, workdir)
  try:
    second = run_cli("pretrain", "--config=configs/pretrain_fmnist.py",
                     f"--workdir={workdir}", *TINY_FLAGS, "--config.num_train_steps=3")
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    lines = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and f"is in use by pid {first.pid}" in lines[0], lines
  finally:
    first.kill()  # like kill -9: the lock stays behind
    first.communicate(timeout=60)
  assert os.path.exists(os.path.join(workdir, ".lock"))
  third = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
                  *TINY_FLAGS, "--config.num_train_steps=3", check=True)
  assert "no longer running" in third.stdout + third.stderr
  assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_config_file_problems_are_one_line(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "empty.py").write_text("x = 1\n")
  cases = ((tmp_path / "missing.py", "does not exist"),
           (tmp_path / "syntax.py", "syntax error at line 1"),
           (tmp_path / "empty.py", "defines no get_config"))
  # a config file loaded before in this process (the in-process CLI) changes nothing
  assert run_cli("pretrain", "--config=configs/pretrain_fmnist.py",
                 f"--workdir={tmp_path / 'w'}", "stray").returncode == 2
  for path, pattern in cases:
    proc = run_cli("pretrain", f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], (path, lines)
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_ctrl_c_reports_the_step_it_saved(tmp_path, fmnist_available):
  """In process: the step a Ctrl-C'd run returns (the CLI prints it: "interrupted at
  step N") is the step of its checkpoint and of its last metrics row."""
  import threading
  import mae_jax
  from conftest import load_config, tiny_overrides, training_rows
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=100000)
  config.checkpoint.every_steps = 100000
  metrics = tmp_path / "metrics.jsonl"
  done = threading.Event()

  def interrupt():  # once the loop is running (its handler installed)
    while not done.is_set() and not (metrics.exists() and metrics.stat().st_size > 0):
      time.sleep(0.1)
    if not done.is_set():
      os.kill(os.getpid(), signal.SIGINT)
  thread = threading.Thread(target=interrupt, daemon=True)
  thread.start()
  try:
    result = pretrain.train_and_evaluate(config, str(tmp_path))
  finally:
    done.set()
    thread.join()
  assert result["signal"] == "SIGINT"
  assert result["preempted_at"] == mae_jax.load(str(tmp_path)).step >= 1
  assert training_rows(tmp_path)[-1]["step"] == result["preempted_at"]
