"""Multi-host initialisation through JAX's own runtime (``jax.distributed``).

Every process runs the same command. On TPU VMs and under SLURM,
``jax.distributed.initialize()`` reads its peers from the environment; local runs
pass ``--coordinator_address/--num_processes/--process_id``.

Failure must be a clear message after a bounded time, never a hang or a crash
dump. JAX's client aborts the process (``SIGABRT`` and a C++ stack trace) when the
coordinator does not answer within its timeout, so this module

* checks, from processes other than 0, that the coordinator's port accepts TCP
  connections before handing over to JAX, retrying until the deadline, and raises
  :class:`CoordinatorUnreachableError` if it never does;
* runs a watchdog during ``jax.distributed.initialize`` that, at the deadline,
  prints one ``error:`` line saying what to check and exits with status 2 (the
  CLI's status for user errors) before JAX's own, later, timeout would abort;
* turns the exceptions JAX raises for bad arguments into :class:`DistributedError`.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import jax

from mae_jax.errors import ConfigError, UserError

DEFAULT_TIMEOUT_S = 300
EXIT_STATUS = 2  # the CLI's status for errors the user can fix
_JAX_GRACE_S = 15  # JAX's own timeout fires this much after ours
_JOINED = None  # what this process joined as: the explicit flags, or "environment"


class DistributedError(UserError, RuntimeError):
  """The processes of a multi-host run could not be joined."""


class CoordinatorUnreachableError(DistributedError):
  """Process 0 (the coordinator) did not accept connections within the timeout."""


def _on_cloud_tpu_vm() -> bool:
  """A Cloud TPU VM: TPU chips (Google's PCI vendor id) attached to this machine."""
  import glob
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() == "0x1ae0":
          return True
    except OSError:
      continue
  return False


def cluster_environment() -> str | None:
  """The cluster whose environment tells ``jax.distributed`` its peers, or None.

  ``MAE_JAX_DISTRIBUTED=auto`` forces JAX's auto-detection (any cluster JAX
  knows), ``=off`` turns it off (one process per machine, nothing joined).
  """
  forced = os.environ.get("MAE_JAX_DISTRIBUTED", "").lower()
  if forced in ("0", "off", "false", "no"):
    return None
  if forced in ("1", "auto", "on", "true", "yes"):
    return "auto-detected"
  tasks = os.environ.get("SLURM_NTASKS", "1")
  if "SLURM_JOB_ID" in os.environ and tasks.isdigit() and int(tasks) > 1:
    return "SLURM"
  if ("TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
      or _on_cloud_tpu_vm()):
    return "TPU"
  return None


def _slurm_local_device_ids() -> list[int] | None:
  """All GPUs of the node when SLURM runs one task per node.

  JAX's SLURM detection assumes one task per GPU and would show each process
  only GPU ``SLURM_LOCALID``. ``JAX_LOCAL_DEVICE_IDS``, when set, wins.
  """
  if os.environ.get("JAX_LOCAL_DEVICE_IDS") or os.environ.get("SLURM_NTASKS_PER_NODE") != "1":
    return None
  visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  return list(range(len(visible))) if visible else None


def parse_address(address: str) -> tuple[str, int]:
  """``host:port`` (``[v6]:port`` too) -> (host, port); a ConfigError otherwise."""
  host, sep, port = address.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"--coordinator_address={address!r} is not HOST:PORT, e.g. "
                      "10.0.0.2:1234 (the address of process 0 and a free port).")
  return host, int(port)


def wait_for_coordinator(address: str, timeout_s: float, poll_s: float = 0.5) -> None:
  """Returns once ``address`` accepts a TCP connection; raises after ``timeout_s``."""
  host, port = parse_address(address)
  deadline = time.monotonic() + timeout_s
  last = "no attempt"
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(0.1, min(poll_s * 4, 5.0))):
        return
    except socket.gaierror as e:
      raise CoordinatorUnreachableError(
          f"cannot resolve the coordinator host {host!r} in --coordinator_address="
          f"{address} ({e.strerror}); use the IP or hostname of the machine running "
          "--process_id=0.") from None
    except OSError as e:
      last = e.strerror or type(e).__name__
    if time.monotonic() + poll_s > deadline:
      break
    time.sleep(poll_s)
  raise CoordinatorUnreachableError(
      f"the coordinator at {address} did not accept connections within {timeout_s:g} s "
      f"({last}). Start the same command with --process_id=0 on that host first, check "
      "the address, port and firewall, or raise --distributed_timeout_s.")


class _Watchdog:
  """Prints ``message`` as one error line and exits unless stopped within ``timeout_s``."""

  def __init__(self, timeout_s: float, message: str):
    self._done = threading.Event()
    self._timeout_s = timeout_s
    self._message = message
    self._thread = threading.Thread(target=self._run, name="distributed-watchdog",
                                    daemon=True)

  def _run(self):
    if not self._done.wait(self._timeout_s):
      sys.stdout.flush()
      print(f"error: {self._message}", file=sys.stderr, flush=True)
      os._exit(EXIT_STATUS)  # the main thread is blocked inside JAX's C++ client

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()


def _join(kwargs: dict, timeout_s: float, message: str) -> None:
  kwargs = dict(kwargs, initialization_timeout=int(timeout_s) + _JAX_GRACE_S)
  # Its SIGTERM notifier and sync point stop every process at one step
  # (mae_jax.train.preemption).
  jax.config.update("jax_enable_preemption_service", True)
  with _Watchdog(timeout_s, message):
    try:
      jax.distributed.initialize(**kwargs)
    except UserError:
      raise
    except Exception as e:  # JAX raises ValueError/RuntimeError/JaxRuntimeError
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise DistributedError(
          f"jax.distributed.initialize failed ({type(e).__name__}: {first}). Check "
          "--coordinator_address/--num_processes/--process_id (or the TPU/SLURM "
          "environment) and that every process runs the same command.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
  """Joins the processes of a multi-host run; idempotent.

  Explicit arguments for local runs, else the TPU/SLURM environment. A
  single-process run without a cluster environment does nothing. Raises a
  :class:`DistributedError` (or exits with one ``error:`` line) after at most
  about ``timeout_s`` seconds if the processes cannot be joined.
  """
  global _JOINED
  if timeout_s is None or timeout_s <= 0:
    raise ConfigError(f"--distributed_timeout_s={timeout_s} must be positive.")
  explicit = [coordinator_address, num_processes, process_id]
  start = time.monotonic()
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError("--coordinator_address, --num_processes and --process_id go "
                        "together; give all three (or none on TPU VMs / SLURM).")
    if num_processes < 1:
      raise ConfigError(f"--num_processes={num_processes} must be at least 1.")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes}).")
    parse_address(coordinator_address)
  if _JOINED is not None:  # a second command in this Python process
    wanted = tuple(explicit) if any(v is not None for v in explicit) else None
    if wanted is not None and wanted != _JOINED and num_processes > 1:
      raise DistributedError(
          f"this Python process already runs JAX as process {jax.process_index()} of "
          f"{jax.process_count()}; a run on {num_processes} processes "
          "(--coordinator_address, --num_processes, --process_id) needs a Python "
          "process of its own: start the command from a shell.")
    return
  if any(v is not None for v in explicit):
    if num_processes == 1:
      logging.info("--num_processes=1: a single-process run, nothing to join")
      _JOINED = tuple(explicit)
      return
    if process_id != 0:
      wait_for_coordinator(coordinator_address, timeout_s)
    left = max(1.0, timeout_s - (time.monotonic() - start))
    if process_id == 0:
      others = "1" if num_processes == 2 else f"1..{num_processes - 1}"
      message = (f"only some of the {num_processes} processes joined the coordinator at "
                 f"{coordinator_address} within {timeout_s:g} s. Start the same command "
                 f"with --process_id={others} on the other hosts, check "
                 "--num_processes and the firewall, or raise --distributed_timeout_s.")
    else:
      message = (f"process {process_id} reached the coordinator at {coordinator_address} "
                 f"but the {num_processes} processes were not all joined within "
                 f"{timeout_s:g} s. Check that every process got the same "
                 "--num_processes and a distinct --process_id, or raise "
                 "--distributed_timeout_s.")
    _join(dict(coordinator_address=coordinator_address, num_processes=num_processes,
               process_id=process_id), left, message)
  elif (cluster := cluster_environment()) is not None:
    kwargs = {}
    if cluster == "SLURM" and (ids := _slurm_local_device_ids()) is not None:
      kwargs["local_device_ids"] = ids
    message = (f"the processes of this {cluster} job did not all join within "
               f"{timeout_s:g} s. Check that the same command runs on every host "
               "(gcloud ... --worker=all, srun with one task per node), or raise "
               "--distributed_timeout_s.")
    _join(kwargs, timeout_s, message)
  else:
    _JOINED = "environment"
    return
  _JOINED = tuple(explicit) if any(v is not None for v in explicit) else "environment"
  logging.info("joined %d processes as process %d (%d local / %d global devices)",
               jax.process_count(), jax.process_index(), jax.local_device_count(),
               jax.device_count())
