"""Multi-host on one machine: processes joined by jax.distributed on 127.0.0.1.

2 processes x 4 CPU devices must train exactly like 1 process x 8 devices (the
global batch does not depend on the process count), resume with per-process
data-iterator state, and leave a checkpoint a 1-process run continues from.
"""
import glob
import json
import os
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, run_cli, training_rows

pytestmark = pytest.mark.slow  # every test here trains or starts processes

LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")
# Faster XLA compiles on the CPU; both sides of every comparison use them.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
RTOL = 2e-3
PEAK_LR = 1.5e-3 * 32 / 256  # configs/pretrain_fmnist.py base_lr at batch 32
# A constant learning rate: runs of different lengths follow one trajectory.
CONSTANT_LR = ["--config.optim.warmup_steps=0", f"--config.optim.min_lr={PEAK_LR}"]
RECOVER = "--config.optim.on_nonfinite=recover"


def _pretrain(workdir, steps, *extra):
  return ["pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={workdir}",
          *TINY_FLAGS, *CONSTANT_LR, f"--config.num_train_steps={steps}",
          "--config.checkpoint.every_steps=4", *extra]


def _launch(n, devices, args, tmp_path, timeout=300):
  import subprocess
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA,
             MAE_JAX=f"{sys.executable} -m mae_jax", PYTHON=sys.executable)
  log_dir = tmp_path / f"logs_{time.monotonic_ns()}"
  proc = subprocess.run(["bash", LAUNCHER, f"--devices_per_process={devices}",
                         f"--log_dir={log_dir}", "--timeout_s=60", str(n), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  logs = "".join(open(p).read()[-2000:] for p in sorted(glob.glob(f"{log_dir}/*.log")))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
  return proc


def test_two_processes_train_resume_and_hand_over_to_one(tmp_path, monkeypatch,
                                                        fmnist_available):
  """Also a non-finite step (injected at step 6) that every run recovers from
  (``optim.on_nonfinite=recover``): both processes go back to the checkpoint of step 4
  together, and the 1-process run that continues after them keeps their recovery."""
  from mae_jax.train.recovery import FAULT_ENV
  monkeypatch.setenv(FAULT_ENV, "6")
  eight = {"XLA_FLAGS": f"{FAST_XLA} --xla_force_host_platform_device_count=8"}
  ref, multi = tmp_path / "one_process", tmp_path / "two_processes"
  run_cli(*_pretrain(ref, 10, RECOVER), env=eight, check=True)
  want = training_rows(ref)
  mesh = ["--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.mesh.model=1"]

  _launch(2, 4, _pretrain(multi, 4, RECOVER, *mesh), tmp_path)
  data = sorted(os.listdir(multi / "checkpoints" / "4" / "data"))
  assert [f for f in data if f.endswith(".json")] == ["process_0-of-2.json",
                                                     "process_1-of-2.json"]
  proc = _launch(2, 4, _pretrain(multi, 8, RECOVER, *mesh), tmp_path)  # per-process resume
  assert "resumed from step 4" in proc.stdout
  proc = run_cli(*_pretrain(multi, 10, RECOVER), env=eight, check=True)  # 1 process on
  assert "resumed from step 8" in proc.stdout

  got = training_rows(multi)
  assert [r["step"] for r in got] == list(range(1, 11))  # process 0 alone wrote them
  for workdir in (ref, multi):
    with open(workdir / "metrics.jsonl") as f:
      events = [r for r in map(json.loads, f) if "event" in r]
    assert [(e["step"], e["restored_step"]) for e in events] == [(6, 4)], events
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=RTOL)
  np.testing.assert_allclose([r["grad_norm"] for r in got], [r["grad_norm"] for r in want],
                             rtol=RTOL)
  # process 0 alone writes TensorBoard and reconstructions: one file per invocation
  assert len(glob.glob(str(multi / "tensorboard" / "events.*"))) == 3
  assert sorted(os.listdir(multi / "recon")) == ["step_0000004.png", "step_0000008.png",
                                                 "step_0000010.png"]
  # a checkpoint written by 2 processes initialises a 1-process fine-tuning
  tuned = tmp_path / "finetune_one_process"
  run_cli(*_classifier("finetune", tuned, multi / "checkpoints" / "8"), env=eight, check=True)
  with open(tuned / "eval.json") as f:
    assert 0.0 <= json.load(f)["top1"] <= 1.0

  import mae_jax
  a, b = mae_jax.load(str(multi)), mae_jax.load(str(ref))
  assert a.step == b.step == 10
  import jax
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-2, atol=1e-4),
               a.params, b.params)


def _classifier(task, workdir, init_from, *extra):
  """The shipped Fashion-MNIST fine-tune / probe config on the tiny pretrained model,
  4 steps; eval batch 500 (the config's), which 8 devices do not divide."""
  return [task, f"--config=configs/{task}_fmnist.py:steps=4", f"--workdir={workdir}",
          f"--config.init_from={init_from}", "--config.model.embed_dim=32",
          "--config.model.depth=1", "--config.model.num_heads=2",
          "--config.model.patch_size=7", "--config.batch_size=32",
          "--config.log_every_steps=1", "--config.data.eval_max_examples=100",
          "--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.mesh.model=1", *extra]


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_classifier_on_two_processes_equals_one_process(task, tmp_path, fmnist_available):
  """init_from a 1-process pretraining; 2 processes x 4 devices train and evaluate
  exactly like 1 process x 8 devices (the global batch, mixup/cutmix pairs and
  drop-path draws do not depend on the process count)."""
  eight = {"XLA_FLAGS": f"{FAST_XLA} --xla_force_host_platform_device_count=8"}
  pretrained = tmp_path / "pretrained"
  run_cli(*_pretrain(pretrained, 4), env=eight, check=True)
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  run_cli(*_classifier(task, one, pretrained), env=eight, check=True)
  _launch(2, 4, _classifier(task, two, pretrained), tmp_path)
  want, got = training_rows(one), training_rows(two)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
  for key in ("loss", "grad_norm", "param_norm"):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=1e-6,
                               err_msg=key)
  evals = []
  for workdir in (one, two):
    with open(workdir / "eval.json") as f:
      evals.append(json.load(f))
  assert evals[0]["num_examples"] == evals[1]["num_examples"] == 100
  assert evals[0]["top1"] == evals[1]["top1"] and evals[0]["top5"] == evals[1]["top5"]


@pytest.mark.parametrize("process_id,pattern", [
    (1, "did not accept connections within 3 s"),
    (0, "only some of the 2 processes joined"),
])
def test_unreachable_coordinator_fails_fast_with_a_clear_error(tmp_path, process_id,
                                                               pattern):
  import socket
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.monotonic()
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}",
                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={process_id}", "--distributed_timeout_s=3", timeout=60,
                 process=True)  # JAX's client aborts a process: the point is a real one
  elapsed = time.monotonic() - start
  assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and pattern in lines[0], proc.stderr
  assert "--distributed_timeout_s" in lines[0]
  assert elapsed < 45, elapsed


def test_bad_distributed_flags_are_config_errors(tmp_path):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}",
                 "--coordinator_address=localhost", "--num_processes=2", "--process_id=1")
  assert proc.returncode == 2 and "is not HOST:PORT" in proc.stderr, proc.stderr
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}",
                 "--coordinator_address=127.0.0.1:1234", "--num_processes=2")
  assert proc.returncode == 2 and "go together" in proc.stderr, proc.stderr


def test_launcher_reports_a_failed_process(tmp_path):
  import subprocess
  env = dict(os.environ, MAE_JAX=f"{sys.executable} -m mae_jax", PYTHON=sys.executable)
  start = time.monotonic()
  proc = subprocess.run(
      ["bash", LAUNCHER, "--devices_per_process=1", f"--log_dir={tmp_path}", "2", "pretrain",
       "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/w",
       "--config.model.mask_ratio=1.5"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  assert "exited with status 2" in proc.stderr and "mask_ratio" in proc.stderr
  assert time.monotonic() - start < 100


def _start(n, devices, args, tmp_path, name):
  """``n`` processes of ``python -m mae_jax ARGS`` joined on 127.0.0.1; their Popen
  objects and log paths (started directly, to signal one of them)."""
  import socket
  import subprocess
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"{FAST_XLA} --xla_force_host_platform_device_count={devices}")
  procs, logs = [], []
  for i in range(n):
    logs.append(tmp_path / f"{name}_process_{i}.log")
    with open(logs[-1], "w") as log:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "mae_jax", *args, f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={n}", f"--process_id={i}", "--distributed_timeout_s=60"],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs, logs


def _finish(procs, logs, timeout=300):
  """Each process's (exit status, log text); kills them all if one hangs."""
  results = []
  try:
    for proc, log in zip(procs, logs):
      proc.wait(timeout=timeout)
      results.append((proc.returncode, open(log).read()))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return results


def _interrupt(procs, logs, workdir, after_step, target, signum):
  """Sends ``signum`` to process ``target`` once metrics.jsonl has passed ``after_step``;
  returns what ``_finish`` returns."""
  deadline = time.time() + 600
  while not (os.path.exists(workdir / "metrics.jsonl") and
             any(r["step"] > after_step for r in training_rows(workdir))):
    for proc, log in zip(procs, logs):
      assert proc.poll() is None, open(log).read()[-3000:]
    if time.time() > deadline:
      for proc in procs:
        proc.kill()
      raise AssertionError(f"no step after {after_step} within 600 s")
    time.sleep(0.2)
  procs[target].send_signal(signum)
  return _finish(procs, logs)


def _preempted_step(results):
  """The step every process reports it stopped at (the same on all, or the test fails)."""
  import re
  steps = set()
  for _, log in results:
    found = re.findall(r"preempted at step (\d+)", log)
    assert len(found) == 1, log[-3000:]
    steps.add(int(found[0]))
  assert len(steps) == 1, steps
  return steps.pop()


def test_a_signal_to_one_process_stops_all_at_one_step_and_resumes_exactly(
    tmp_path, fmnist_available):
  """SIGTERM to process 1 (a preempted host) and later Ctrl-C to process 0: JAX's
  preemption sync point stops both processes after the same step, both save it
  (exit 0; 130 for the one Ctrl-C reached), and the run resumed from there equals
  one never interrupted.

  No persistent compilation cache here: with jax 0.10.2, two CPU processes that load
  the same cached executables hang at their first collective (the runs of this test
  compile identical steps)."""
  import signal
  mesh = ["--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.mesh.model=1"]
  endless = ["--config.checkpoint.every_steps=100000"]
  work = tmp_path / "interrupted"

  results = _interrupt(*_start(2, 4, _pretrain(work, 100000, *mesh, *endless), tmp_path,
                               "sigterm"), work, 1, 1, signal.SIGTERM)
  assert [rc for rc, _ in results] == [0, 0], [log[-3000:] for _, log in results]
  first = _preempted_step(results)
  # JAX's notifier took the signal: the Python handler (one process) did not run
  assert "received signal" not in results[1][1]
  data = sorted(os.listdir(work / "checkpoints" / str(first) / "data"))
  assert [f for f in data if f.endswith(".json")] == ["process_0-of-2.json",
                                                     "process_1-of-2.json"]

  results = _interrupt(*_start(2, 4, _pretrain(work, 100000, *mesh, *endless), tmp_path,
                               "sigint"), work, first + 1, 0, signal.SIGINT)
  assert [rc for rc, _ in results] == [130, 0], [log[-3000:] for _, log in results]
  assert f"resumed from step {first}" in results[0][1]
  second = _preempted_step(results)
  assert second > first
  assert "interrupted at step" in results[0][1] and "Traceback" not in results[0][1]

  total = second + 2
  results = _finish(*_start(2, 4, _pretrain(work, total, *mesh), tmp_path, "resume"))
  assert [rc for rc, _ in results] == [0, 0], [log[-3000:] for _, log in results]
  assert f"resumed from step {second}" in results[0][1]

  ref = tmp_path / "uninterrupted"
  _launch(2, 4, _pretrain(ref, total, *mesh), tmp_path, timeout=900)
  got, want = training_rows(work), training_rows(ref)
  assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, total + 1))
  for key in ("loss", "grad_norm", "param_norm"):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=1e-6,
                               err_msg=key)
  import jax
  import mae_jax
  a, b = mae_jax.load(str(work)), mae_jax.load(str(ref))
  assert a.step == b.step == total
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               a.params, b.params)
