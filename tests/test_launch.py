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
CASES = {  # golden file name: the command, run from the repository root
    "tpu_vm_create": [TPU, "create", "--dry-run", *POD],
    "tpu_vm_create_queued": [TPU, "create", "--dry-run", *POD, "--queued"],
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


def test_tpu_retry_recreates_a_preempted_vm(tmp_path):
  """A fake gcloud: the VM is PREEMPTED, the first run fails, the rerun succeeds."""
  fake = tmp_path / "bin"
  fake.mkdir()
  log = tmp_path / "calls"
  state = tmp_path / "state"
  state.write_text("READY")
  (fake / "gcloud").write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *" describe "*) cat {state} ;;
  *" delete "*) echo GONE > {state} ;;
  *" create "*) echo READY > {state} ;;
  *"mae-jax pretrain"*)
    if [ ! -e {tmp_path}/ran ]; then touch {tmp_path}/ran; echo PREEMPTED > {state}; exit 255; fi ;;
esac
exit 0
""")
  (fake / "gcloud").chmod(0o755)
  (fake / "tar").write_text("#!/bin/sh\nexit 0\n")
  (fake / "tar").chmod(0o755)
  env = _clean_env(PATH=f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}", RETRY_WAIT_S="0")
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "retry", *POD, "--", *L16], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  calls = [line.split()[3] for line in log.read_text().splitlines()]
  assert calls == ["describe", "ssh", "describe", "describe", "delete", "create", "describe",
                   "scp", "ssh", "ssh"], calls
  assert "run finished" in proc.stdout


def test_tpu_retry_stops_when_a_healthy_vm_fails(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "gcloud").write_text("""#!/bin/sh
case "$*" in
  *" describe "*) echo READY ;;
  *"mae-jax"*) exit 2 ;;
esac
""")
  (fake / "gcloud").chmod(0o755)
  env = _clean_env(PATH=f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}", RETRY_WAIT_S="0")
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "retry", *POD, "--", *L16], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "not a preemption" in proc.stderr, proc.stderr


def test_bad_launcher_arguments(tmp_path):
  for argv in (["launch/tpu_vm.sh", "frobnicate"],
               ["launch/tpu_vm.sh", "run", "--dry-run"],
               ["launch/tpu_vm.sh", "create", "--queued", "--preemptible", "--dry-run"],
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
