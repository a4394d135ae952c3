"""Flags and helpers shared by every command."""
from __future__ import annotations

import functools
import logging
import os
import sys

from absl import flags

from mae_jax.errors import UserError

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a local multi-process run (jax.distributed). Not needed "
    "on TPU VMs or under SLURM, where the environment says it.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a local run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a local run.")


def guarded(main):
  """Runs ``main``; a ``UserError`` becomes one line on stderr and exit status 2."""
  @functools.wraps(main)
  def wrapper(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return wrapper


def init_distributed():
  """``jax.distributed.initialize`` from the flags or the environment (idempotent)."""
  from mae_jax.parallel import distributed
  distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)


def setup_logging():
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout,
                      force=True)
  for noisy in ("absl", "orbax", "jax._src", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
