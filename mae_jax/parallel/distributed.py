"""Multi-host initialisation through JAX's own runtime (``jax.distributed``)."""
from __future__ import annotations

import os

import jax

from mae_jax.errors import ConfigError

_INITIALIZED = False


def _cluster_environment() -> bool:
  """True where ``jax.distributed.initialize()`` finds its peers by itself."""
  return any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                       "MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               timeout_s: int = 120) -> None:
  """Idempotent. Explicit arguments for local runs, else the TPU/SLURM environment.

  Single-process runs without a cluster environment do nothing.
  """
  global _INITIALIZED
  if _INITIALIZED:
    return
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError("--coordinator_address, --num_processes and --process_id go "
                        "together; give all three (or none on TPU VMs / SLURM).")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s)
  elif _cluster_environment():
    jax.distributed.initialize(initialization_timeout=timeout_s)
  _INITIALIZED = True
