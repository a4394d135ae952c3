"""Nothing lost: Ctrl-C saves and exits 130, a second run on a workdir in use is
refused, a lock left by a killed run is taken over."""
import glob
import os
import signal
import subprocess
import sys
import time

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
  for path, pattern in cases:
    proc = run_cli("pretrain", f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], (path, lines)
  assert not os.path.exists(tmp_path / "w")
