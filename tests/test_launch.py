"""Launch scripts: syntax, shellcheck where installed, and --dry-run output vs golden files.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 python -m pytest tests/test_launch.py``.
"""
import glob
import os
import shutil
import subprocess

import pytest

from conftest import REPO

GOLDEN = os.path.join(REPO, "tests", "golden")
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) +
                 glob.glob(os.path.join(REPO, "launch", "*.sbatch")))
# The launch documented in docs/scaling.md: ViT-L/16 on a v4-64 spot slice.
POD = ["--name=mae-l16", "--zone=us-central2-b", "--project=my-project",
       "--accelerator=v4-64", "--spot"]
L16 = ["pretrain", "--config=configs/pretrain_imagenet.py:variant=L/16",
       "--workdir=gs://my-bucket/mae/vit_l16",
       "--config.data.data_dir=gs://my-bucket/tensorflow_datasets"]
TPU = "launch/tpu_vm.sh"
# Two v5p-64 slices as one multislice queued resource.
MULTISLICE = ["--name=mae-ms", "--zone=us-east5-a", "--project=my-project",
              "--accelerator=v5p-64", "--node-count=2", "--spot"]
CASES = {  # golden file name: the command, run from the repository root
    "tpu_vm_create": [TPU, "create", "--dry-run", *POD],
    "tpu_vm_create_queued": [TPU, "create", "--dry-run", *POD, "--queued"],
    # the runtime version follows the accelerator generation unless --version is given
    "tpu_vm_create_v5e": [TPU, "create", "--dry-run", *POD, "--accelerator=v5litepod-16"],
    "tpu_vm_create_v5p": [TPU, "create", "--dry-run", *POD, "--accelerator=v5p-32"],
    "tpu_vm_create_v6e": [TPU, "create", "--dry-run", *POD, "--accelerator=v6e-16"],
    "tpu_vm_create_version": [TPU, "create", "--dry-run", *POD, "--accelerator=v6e-16",
                              "--version=v2-alpha-tpuv6e-custom"],
    "tpu_vm_multislice_create": [TPU, "create", "--dry-run", *MULTISLICE],
    "tpu_vm_multislice_setup": [TPU, "setup", "--dry-run", *MULTISLICE],
    "tpu_vm_multislice_run": [TPU, "run", "--dry-run", *MULTISLICE, "--", *L16],
    "tpu_vm_multislice_logs": [TPU, "logs", "--dry-run", *MULTISLICE, "--node=1"],
    "tpu_vm_multislice_retry": [TPU, "retry", "--dry-run", *MULTISLICE, "--", *L16],
    "tpu_vm_stop": [TPU, "stop", "--dry-run", *POD],
    "tpu_vm_setup": [TPU, "setup", "--dry-run", *POD],
    "tpu_vm_setup_repo": [TPU, "setup", "--dry-run", *POD,
                          "--repo=https://github.com/my-org/mae_jax.git", "--branch=main"],
    "tpu_vm_run": [TPU, "run", "--dry-run", *POD, "--", *L16],
    "tpu_vm_retry": [TPU, "retry", "--dry-run", *POD, "--", *L16],
    "tpu_vm_logs": [TPU, "logs", "--dry-run", *POD, "--lines=20"],
    "tpu_vm_delete": [TPU, "delete", "--dry-run", *POD],
    "slurm_submit": ["launch/slurm_submit.sh", "--dry-run", "--nodes=4", "--gpus_per_node=8",
                     "--partition=gpu", "--time=72:00:00", "--", *L16[:2],
                     "--workdir=/shared/mae/vit_l16"],
    "local_multiprocess": ["launch/local_multiprocess.sh", "--dry-run", "--port=23456",
                           "--devices_per_process=4", "2", "pretrain",
                           "--config=configs/pretrain_fmnist.py", "--workdir=workdirs/two",
                           "--config.mesh.data=4", "--config.mesh.fsdp=2"],
}


def _clean_env(**extra):
  """No TPU_NAME/ZONE/... from the caller's shell, so the output is reproducible."""
  env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
         "TMPDIR": "/tmp", "LC_ALL": "C"}
  env.update(extra)
  return env


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


def test_shellcheck_clean_where_installed():
  if shutil.which("shellcheck") is None:
    return  # bash -n above always runs; shellcheck is an extra where present
  proc = subprocess.run(["shellcheck", *SCRIPTS], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_executable():
  for script in SCRIPTS:
    assert os.access(script, os.X_OK), script


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_matches_golden(name):
  proc = subprocess.run(["bash", *CASES[name]], cwd=REPO, env=_clean_env(),
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  path = os.path.join(GOLDEN, f"{name}.txt")
  if os.environ.get("UPDATE_GOLDEN"):
    os.makedirs(GOLDEN, exist_ok=True)
    with open(path, "w") as f:
      f.write(proc.stdout)
  with open(path) as f:
    assert proc.stdout == f.read()
  assert REPO not in proc.stdout  # nothing of this machine in the commands


def test_docs_show_the_current_golden_output():
  """docs/scaling.md quotes these dry runs; they must be what the scripts print now."""
  with open(os.path.join(REPO, "docs", "scaling.md")) as f:
    docs = f.read()
  for name in ("tpu_vm_create", "tpu_vm_setup", "tpu_vm_run", "tpu_vm_logs",
               "tpu_vm_create_v6e", "tpu_vm_multislice_create", "tpu_vm_multislice_run",
               "slurm_submit"):
    with open(os.path.join(GOLDEN, f"{name}.txt")) as f:
      for line in f.read().splitlines():
        assert line in docs, (name, line)


def test_every_tpu_command_is_printed_and_dry_run_runs_nothing(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  marker = tmp_path / "called"
  (fake / "gcloud").write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\n")
  (fake / "gcloud").chmod(0o755)
  env = _clean_env(PATH=f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}")
  for sub in ("create", "run", "delete", "logs"):
    extra = ["--", *L16] if sub == "run" else []
    proc = subprocess.run(["bash", "launch/tpu_vm.sh", sub, "--dry-run", *POD, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("+ gcloud "), proc.stderr
  assert not marker.exists()
  # without --dry-run the printed command is the one that runs
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "delete", *POD], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert marker.read_text().split() == proc.stdout.split()[2:]


def _fake_gcloud(tmp_path, script):
  """A ``gcloud`` on PATH that logs its arguments to ``tmp_path/calls`` and runs
  ``script`` (sh ``case`` arms on ``$*``); the environment to run the launcher with."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "gcloud").write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/calls
case "$*" in
{script}
esac
exit 0
""")
  (fake / "gcloud").chmod(0o755)
  (fake / "tar").write_text("#!/bin/sh\nexit 0\n")
  (fake / "tar").chmod(0o755)
  return _clean_env(PATH=f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}", RETRY_WAIT_S="0")


def _calls(tmp_path):
  """Each gcloud call as its verb, with the launch/detached.sh action for ssh."""
  calls = []
  for line in (tmp_path / "calls").read_text().splitlines():
    words = line.split()
    verb = words[3]
    if verb == "ssh" and "detached.sh" in line:
      verb += " " + words[words.index("launch/detached.sh") + 1]
    calls.append(verb)
  return calls


def test_tpu_retry_recreates_a_preempted_vm(tmp_path):
  """The VM is preempted while the run goes on: waiting for it loses the VM, the
  launcher recreates, sets up and starts it again, and the rerun succeeds."""
  state = tmp_path / "state"
  state.write_text("READY")
  env = _fake_gcloud(tmp_path, f"""
  *" describe "*) cat {state} ;;
  *" delete "*) echo GONE > {state} ;;
  *" create "*) echo READY > {state} ;;
  *"detached.sh wait"*)
    if [ ! -e {tmp_path}/ran ]; then touch {tmp_path}/ran; echo PREEMPTED > {state}; exit 255; fi
    echo "mae-jax exited with status 0 on w-0" ;;""")
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "retry", *POD, "--", *L16], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert _calls(tmp_path) == [
      "describe", "ssh start", "ssh follow", "ssh wait", "describe",
      "describe", "delete", "create", "describe", "scp", "ssh", "ssh start", "ssh follow",
      "ssh wait"]
  assert "run finished" in proc.stdout


def test_tpu_retry_reconnects_to_a_detached_run(tmp_path):
  """The connection drops but the VM is healthy: the run goes on detached, so the
  launcher waits for it again instead of starting a second one."""
  env = _fake_gcloud(tmp_path, f"""
  *" describe "*) echo READY ;;
  *"detached.sh wait"*)
    if [ ! -e {tmp_path}/dropped ]; then touch {tmp_path}/dropped; exit 255; fi
    echo "mae-jax exited with status 0 on w-0" ;;""")
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "retry", *POD, "--", *L16], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert _calls(tmp_path) == ["describe", "ssh start", "ssh follow", "ssh wait", "describe",
                              "describe", "ssh follow", "ssh wait"]
  assert "lost the connection" in proc.stdout and "run finished" in proc.stdout


def test_tpu_retry_stops_when_a_healthy_vm_fails(tmp_path):
  env = _fake_gcloud(tmp_path, """
  *" describe "*) echo READY ;;
  *"detached.sh wait"*) echo "mae-jax exited with status 0 on w-0"
    echo "mae-jax exited with status 2 on w-1"; exit 1 ;;""")
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "retry", *POD, "--", *L16], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "not a preemption" in proc.stderr, proc.stderr
  assert _calls(tmp_path).count("ssh start") == 1


def test_detached_run_outlives_its_session_and_reports_its_status(tmp_path):
  """launch/detached.sh for real: a run started from a session that then hangs up
  (as an ssh connection ending does) goes on; ``follow`` shows its log until it
  ends, ``wait`` gives its status, ``stop`` sends it SIGTERM, and a second start
  while one runs is refused."""
  import signal
  import sys
  import time
  logs = tmp_path / "logs"
  job = tmp_path / "job.py"
  job.write_text(
      "import signal, sys, time\n"
      "signal.signal(signal.SIGTERM, lambda *a: (print('SIGTERM: saved', flush=True),"
      " sys.exit(0)))\n"
      "open(sys.argv[3], 'w').close()\n"
      "for i in range(int(sys.argv[1])):\n"
      "  print('step', i, flush=True)\n"
      "  time.sleep(0.2)\n"
      "sys.exit(int(sys.argv[2]))\n")
  detached = os.path.join(REPO, "launch", "detached.sh")

  def call(*argv, check=True):
    proc = subprocess.run(["bash", detached, *map(str, argv)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, DETACHED_POLL_S="0.1"))
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc

  def until(path):
    deadline = time.time() + 30
    while not path.exists():
      assert time.time() < deadline, f"{path} never appeared"
      time.sleep(0.05)

  # a session (like sshd's) that starts the run and is then hung up
  session = subprocess.Popen(
      ["bash", "-c", f"bash {detached} start {logs} {sys.executable} {job} 15 3 "
                     f"{tmp_path / 'started'}; sleep 60"], start_new_session=True)
  until(tmp_path / "started")
  os.killpg(session.pid, signal.SIGHUP)
  session.wait(timeout=30)
  pid = int((logs / "mae_jax.pid").read_text())
  os.kill(pid, 0)  # still running
  refused = call("start", logs, "true", check=False)
  assert refused.returncode == 2 and "still going" in refused.stderr
  followed = call("follow", logs, 100).stdout
  assert "step 14" in followed  # followed to the end
  waited = call("wait", logs, check=False)
  assert waited.returncode == 3 and "exited with status 3" in waited.stdout

  call("start", logs, sys.executable, job, 1000, 0, tmp_path / "started_again")
  until(tmp_path / "started_again")
  assert "sent SIGTERM" in call("stop", logs).stdout
  assert "exited with status 0" in call("wait", logs).stdout
  assert "SIGTERM: saved" in (logs / "mae_jax.log").read_text()
  none = call("wait", tmp_path / "no_run", check=False)
  assert none.returncode == 4


def test_bad_launcher_arguments(tmp_path):
  for argv in (["launch/tpu_vm.sh", "frobnicate"],
               ["launch/tpu_vm.sh", "run", "--dry-run"],
               ["launch/tpu_vm.sh", "create", "--queued", "--preemptible", "--dry-run"],
               ["launch/tpu_vm.sh", "create", "--node-count=2", "--preemptible", "--dry-run"],
               ["launch/tpu_vm.sh", "create", "--node-count=0", "--dry-run"],
               ["launch/tpu_vm.sh", "create", "--accelerator=v99-8", "--dry-run"],
               ["launch/tpu_vm.sh", "logs", "--node=1", "--dry-run"],
               ["launch/tpu_vm.sh", "run", "--node-count=2", "--dry-run", "--", "pretrain",
                "--config.mesh.dcn_data=4"],
               ["launch/slurm_submit.sh", "--nodes=0", "--dry-run", "--", "pretrain"],
               ["launch/local_multiprocess.sh", "two", "pretrain"]):
    proc = subprocess.run(["bash", *argv], cwd=REPO, env=_clean_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "error:" in proc.stderr, (argv, proc.stderr)


def test_sbatch_gives_each_node_task_all_its_gpus(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "srun").write_text('#!/bin/sh\necho "srun $* JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS"\n')
  (fake / "srun").chmod(0o755)
  env = _clean_env(PATH=f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                   SLURM_GPUS_PER_NODE="h100:4", SLURM_JOB_ID="7")
  proc = subprocess.run(["bash", "launch/slurm_gpu.sbatch", *L16[:3]], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith("srun --kill-on-bad-exit=1 --ntasks-per-node=1")
  assert "mae-jax pretrain --config=configs/pretrain_imagenet.py:variant=L/16" in last
  assert last.endswith("JAX_LOCAL_DEVICE_IDS=0,1,2,3")


def test_local_launcher_on_ctrl_c_waits_for_every_process_to_save(tmp_path):
  """Ctrl-C to launch/local_multiprocess.sh: every process gets SIGTERM (mae-jax's
  save-and-stop signal) and the launcher exits 130 only after all of them have
  finished; a process taking its time to save is not cut short."""
  import signal
  import sys
  import time
  fake = tmp_path / "fake_mae_jax.py"
  fake.write_text(
      "import signal, sys, time, pathlib\n"
      "pid = [a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1]\n"
      "out = pathlib.Path(sys.argv[1])\n"
      "def save(*_):\n"
      "  time.sleep(1.5)  # a checkpoint being written\n"
      "  (out / f'saved_{pid}').write_text('ok')\n"
      "  sys.exit(0)\n"
      "signal.signal(signal.SIGTERM, save)\n"
      "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
      "(out / f'started_{pid}').write_text('ok')\n"
      "while True: time.sleep(0.1)\n")
  env = _clean_env(MAE_JAX=f"{sys.executable} {fake}")
  def as_from_a_terminal():
    # A shell cannot trap a signal ignored when it starts, and pytest-xdist's workers
    # ignore SIGINT; a terminal's shell does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()  # its own process group, so leftovers can be killed below

  with open(tmp_path / "launcher.log", "w") as log:
    proc = subprocess.Popen(["bash", "launch/local_multiprocess.sh", f"--log_dir={tmp_path}",
                             "2", str(tmp_path)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=as_from_a_terminal)
  try:
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"started_{i}").exists() for i in range(2)):
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
    proc.wait(timeout=60)
    saved = [(tmp_path / f"saved_{i}").exists() for i in range(2)]  # when it ended
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  out = (tmp_path / "launcher.log").read_text()
  assert proc.returncode == 130 and saved == [True, True], out
  assert "waiting for them" in out
