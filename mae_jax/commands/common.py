"""Flags and helpers shared by every command."""
from __future__ import annotations

import functools
import logging
import os
import re
import sys

from absl import flags

from mae_jax.errors import UserError

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a local multi-process run (jax.distributed). Not needed "
    "on TPU VMs or under SLURM, where the environment says it.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a local run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a local run.")
DISTRIBUTED_TIMEOUT = flags.DEFINE_float(
    "distributed_timeout_s", 300.0,
    "Seconds to wait for all processes of a multi-host run to join before failing with "
    "a clear error.")


def _last_error_line(text: str) -> str:
  """The final ``SomeError: message`` line of a message that embeds a traceback."""
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  for line in reversed(lines):
    if "Error: " in line and not line.startswith("flag --"):
      return line.split("Error: ", 1)[1]
  return lines[0] if lines else text


def config_file_problem(e: BaseException) -> str:
  """One line for a config file that cannot be loaded (missing, syntax error, ...)."""
  chain, cause = [], e
  while cause is not None and len(chain) < 8:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  for err in chain:
    if isinstance(err, FileNotFoundError):
      return f"--config file {err.filename} does not exist."
    missing = re.search(r"No such file or directory: '([^']+)'", str(err))
    if missing:
      return f"--config file {missing.group(1)} does not exist."
    if isinstance(err, SyntaxError):
      return (f"--config file {err.filename} has a syntax error at line {err.lineno}: "
              f"{err.msg}.")
  last = chain[-1]
  return f"--config file cannot be loaded ({type(last).__name__}: {last})."


def _unknown_key(e: BaseException):
  text = str(e.args[0] if e.args else e).replace("\n", " ")
  print(f"error: unknown config key {text}; `mae-jax COMMAND --helpfull` lists the flags, "
        "the config file lists its keys.", file=sys.stderr)
  sys.exit(2)


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """Parses flags (and config files/overrides); bad ones become one ``error:`` line.

  ``config_flags`` embeds the config file's traceback in its message and raises a
  bare ``KeyError`` for a misspelt ``--config.KEY``; neither helps a user.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_last_error_line(str(e))}", file=sys.stderr)
    sys.exit(2)
  except (OSError, SyntaxError, ImportError) as e:
    print(f"error: {config_file_problem(e)}", file=sys.stderr)
    sys.exit(2)
  except AttributeError as e:
    if "get_config" in str(e):
      print("error: the --config file defines no get_config(arg) function; every file in "
            "configs/ shows the form.", file=sys.stderr)
      sys.exit(2)
    raise _unknown_key(e) from None
  except KeyError as e:
    _unknown_key(e)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def guarded(main):
  """Runs ``main``; a ``UserError`` becomes one line on stderr and exit status 2."""
  @functools.wraps(main)
  def wrapper(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
      print("error: interrupted; the checkpoints already written are intact. Re-run the "
            "same command to resume.", file=sys.stderr)
      sys.exit(130)
  return wrapper


def init_distributed():
  """``jax.distributed.initialize`` from the flags or the environment (idempotent)."""
  from mae_jax.parallel import distributed
  distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                         timeout_s=DISTRIBUTED_TIMEOUT.value)


def setup_logging():
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout,
                      force=True)
  for noisy in ("absl", "orbax", "jax._src", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def config_command(trainer: str, task: str | None = None, entry: str = "train_and_evaluate"):
  """Flags ``--config``/``--workdir`` and a ``main`` running ``trainer.train_and_evaluate``.

  For the trainers driven by a config file (pretrain, finetune, linprobe); call it
  at import time of the command module, which is the only command module loaded.
  ``task``: the ``config.task`` the command runs (a classifier config says which);
  ``entry``: the function of ``trainer`` it calls with ``(config, workdir)``.
  """
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Run directory (local or gs://); "
                                "re-running on it resumes.")
  flags.mark_flags_as_required(["config", "workdir"])
  dry_run = None
  if entry == "train_and_evaluate":
    dry_run = flags.DEFINE_bool(
        "dry_run", False, "Print the params/optimizer bytes per device, the compiled train "
        "step's peak memory estimate and whether it fits the device memory "
        "(--config.device_memory_gib overrides the detected size), then exit: nothing is "
        "trained, no data read, the workdir not touched.")

  def main(argv):
    del argv
    try:
      value = config.value
      value.keys()  # a file that failed to load gives a stand-in that raises here
    except (OSError, SyntaxError, ImportError) as e:
      raise UserError(config_file_problem(e)) from None
    if task is not None and value.get("task") != task:
      found = value.get("task")
      raise UserError(f"--config is {'a ' + found if found else 'not a classifier'} config, "
                      f"not a {task} config; run `mae-jax {found or 'pretrain'}` with it, or "
                      f"give a configs/{task}_*.py file.")
    setup_logging()
    init_distributed()
    import importlib
    if dry_run is not None and dry_run.value:
      import json
      import jax
      from mae_jax.parallel import memory
      report = importlib.import_module(trainer).dry_run(value)
      if jax.process_index() == 0:
        print(f"dry run of {report['task']}: mesh {report['mesh']}, batch "
              f"{report['batch_size']}, step compiled in {report['compile_s']} s")
        print(memory.describe(report))
        print(json.dumps(report, sort_keys=True))
      return
    result = getattr(importlib.import_module(trainer), entry)(value, workdir.value)
    if isinstance(result, dict) and result.get("signal") == "SIGINT":
      print(f"interrupted at step {result['preempted_at']}; checkpoint saved. Re-run the same "
            "command to resume.", file=sys.stderr)
      sys.exit(130)
  return main
