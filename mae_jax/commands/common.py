"""Flags and helpers shared by every command."""
from __future__ import annotations

import functools
import logging
import os
import re
import sys

from absl import flags

from mae_jax.errors import ConfigError, StorageError, UserError, os_error_message

# ``--verbosity`` of the command that is running (``run_command`` sets it).
_verbosity = 0


def define_process_flags(fv: flags.FlagValues) -> None:
  """The flags every command takes: multi-process set-up and ``--verbosity``."""
  flags.DEFINE_string(
      "coordinator_address", None,
      "host:port of process 0 for a local multi-process run (jax.distributed). Not needed "
      "on TPU VMs or under SLURM, where the environment says it.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes in a local run.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index in a local run.",
                       flag_values=fv)
  flags.DEFINE_float(
      "distributed_timeout_s", 300.0,
      "Seconds to wait for all processes of a multi-host run to join before failing with "
      "a clear error.", flag_values=fv)
  flags.DEFINE_integer("verbosity", 0, "1 or more: print the traceback behind an `error:` "
                       "line.", short_name="v", flag_values=fv)


PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id",
                 "distributed_timeout_s", "verbosity")


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


def _unknown_key(e: BaseException, argv: list[str]):
  """One line for a ``--config.KEY`` the config does not have: the whole dotted key as
  given and the closest key the schema declares."""
  from mae_jax import config_schema
  text = str(e.args[0] if e.args else e).replace("\\'", "'").replace("\\n", "\n")
  name = (re.findall(r"'([^'\n]+)'", text) or [text.strip()])[0]
  given = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  key = next((g for g in given if name in g.split(".")), name)
  print(f"error: {config_schema.unknown_key_message(key)}", file=sys.stderr)
  sys.exit(2)


def parse_flags_or_exit(fv: flags.FlagValues, argv: list[str]) -> list[str]:
  """Parses flags (and config files/overrides); bad ones become one ``error:`` line.

  ``config_flags`` embeds the config file's traceback in its message and raises a
  bare ``KeyError`` for a misspelt ``--config.KEY``; neither helps a user.
  """
  try:
    argv, sizes = _size_overrides(argv)
    args = fv(argv)
    _refuse_blank_values(fv)
    _apply_size_overrides(fv, sizes)
    return args
  except flags.Error as e:
    config_arg = next((a for a in argv if a.startswith("--config=")), None)
    problem = _user_error_in(e)  # the file's get_config(arg) refused its argument
    if config_arg and problem is not None:
      print(f"error: {config_arg}: {problem}", file=sys.stderr)
      sys.exit(2)
    if ("--config must have a value other than None" in str(e)
        and any(a.startswith("--config=") for a in argv)):
      print("error: the --config file's get_config(arg) returned None; it must return the "
            "ConfigDict (every file in configs/ shows the form).", file=sys.stderr)
      sys.exit(2)
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
    raise _unknown_key(e, argv) from None
  except KeyError as e:
    _unknown_key(e, argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _size_overrides(argv: list[str]) -> tuple[list[str], dict]:
  """``--config.KEY=(H, W)`` (or ``HxW``) for a key the schema declares a size (an
  integer or a pair): ml_collections parses an override by the type of the file's
  value, so a pair given for an integer is taken out of ``argv`` here and set after
  the file is loaded (``_apply_size_overrides``). An integer stays where it is."""
  from mae_jax import config_schema
  rest, sizes = [], {}
  for arg in argv:
    key, eq, value = arg[len("--config."):].partition("=") if arg.startswith(
        "--config.") else ("", "", "")
    rule = config_schema.SCHEMA.get(key)
    if eq and rule is not None and rule.kind == config_schema.SIZE and \
        not value.strip().isdigit():
      sizes[key] = _parse_size(key, value)
    else:
      rest.append(arg)
  return rest, sizes


def _parse_size(key: str, text: str):
  import ast
  spelled = text.strip().lower().replace("x", ",")
  try:
    value = ast.literal_eval(spelled if "," in spelled else text.strip())
  except (ValueError, SyntaxError):
    value = None
  if isinstance(value, (tuple, list)) and len(value) == 2 and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    return tuple(value)
  raise UserError(f"--config.{key}={text} must be an integer or a pair of integers "
                  "(height, width), e.g. 224 or (64,96).")


def _apply_size_overrides(fv: flags.FlagValues, sizes: dict) -> None:
  if not sizes:
    return
  config = fv.config
  for key, value in sizes.items():
    *parents, last = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise KeyError(key)
      node = node[part]
    if last not in node:
      raise KeyError(key)
    with node.ignore_type():
      node[last] = value


def _user_error_in(e: BaseException) -> UserError | None:
  """The innermost ``UserError`` a wrapped exception was raised from, if any
  (ml_collections re-raises a config file's error with its traceback in the text)."""
  found, seen = None, 0
  while e is not None and seen < 8:
    if isinstance(e, UserError):
      found = e
    e, seen = e.__cause__ or e.__context__, seen + 1
  return found


def _refuse_blank_values(fv: flags.FlagValues) -> None:
  """Every string flag of a command names something (a path, a dataset, a split): an
  empty or blank value given on the command line (``--workdir=``) would quietly mean
  the current directory or nothing, so it is refused. (Config overrides,
  ``--config.KEY=``, are config values: the config's own checks judge them.)"""
  for name in list(fv):
    flag = fv[name]
    if name == flag.name and not name.startswith("config.") and flag.present and \
        isinstance(flag.value, str) and not flag.value.strip():
      raise UserError(f"--{name} is empty; give a value (`mae-jax COMMAND --help` "
                      "describes it).")


def checked_environment(run):
  """``run(fv, args)`` after the checks of what the command line does not say and
  would fail late or loudly: the open-file limit (``raise_open_file_limit``),
  ``XLA_FLAGS`` (``check_xla_flags``) and the buckets of the ``gs://`` flags
  (``fileio.check_bucket``)."""
  @functools.wraps(run)
  def wrapper(fv: flags.FlagValues, args: list[str]):
    raise_open_file_limit()
    check_xla_flags()
    from mae_jax import fileio
    for name in list(fv):
      flag = fv[name]
      if name == flag.name and flag.present and isinstance(flag.value, str):
        fileio.check_bucket(flag.value, f"--{name}")
    return run(fv, args)
  return wrapper


_XLA_FLAGS_CHECKED: set[str] = set()


def check_xla_flags() -> None:
  """A ``UserError`` naming the entry when ``XLA_FLAGS`` holds a flag this XLA does
  not know: XLA itself aborts the process with a C++ fatal log the first time a
  backend starts. A child process starts a CPU backend with the same ``XLA_FLAGS``
  (about a second); a value that passed is remembered in ``~/.cache/mae_jax`` (per
  jaxlib version) and in this process."""
  value = os.environ.get("XLA_FLAGS", "").strip()
  if not value or value in _XLA_FLAGS_CHECKED:
    return
  import hashlib
  import subprocess
  import jaxlib
  key = hashlib.sha256(f"{jaxlib.__version__} {value}".encode()).hexdigest()[:20]
  marker = os.path.join(os.path.expanduser("~"), ".cache", "mae_jax", "xla_flags_ok", key)
  if os.path.exists(marker):
    _XLA_FLAGS_CHECKED.add(value)
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], env=env,
                        capture_output=True, text=True, timeout=300)
  unknown = re.search(r"Unknown flags? in XLA_FLAGS: (.+)", proc.stderr)
  if proc.returncode != 0 and unknown:
    raise UserError(f"XLA_FLAGS has {unknown.group(1).strip()}, which this XLA (jaxlib "
                    f"{jaxlib.__version__}) does not know; remove it or correct its name "
                    "(XLA would abort at start-up).")
  if proc.returncode == 0:
    _XLA_FLAGS_CHECKED.add(value)
    try:
      os.makedirs(os.path.dirname(marker), exist_ok=True)
      with open(marker, "w") as f:
        f.write(value + "\n")
    except OSError:
      pass  # remembered in this process only


def set_verbosity(level: int) -> None:
  global _verbosity
  _verbosity = level


def _verbose() -> bool:
  """``--verbosity=1`` (or more): show the tracebacks behind ``error:`` lines."""
  return _verbosity >= 1


def _exit_with(message: str, code: int, collect: bool = True):
  if _verbose():
    import traceback
    traceback.print_exc()
  # Finalise what a failed operation abandoned (e.g. coroutines of a checkpoint write
  # whose event loop closed) while the interpreter is whole, not during its shutdown.
  if collect:
    import gc
    gc.collect()
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _is_closed_loop_callback(exc_type, exc, tb) -> bool:
  """The ``RuntimeError('Event loop is closed')`` a tensorstore future raises when it
  completes after the operation that awaited it failed and closed its event loop."""
  if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
    return False
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and os.path.join("asyncio", "base_events.py") in \
      tb.tb_frame.f_code.co_filename


def quiet_unraisablehook(previous):
  """``sys.unraisablehook`` that logs the stray closed-loop callbacks of a failed
  checkpoint read or write at debug level (the failure itself is reported once, as
  the ``error:`` line; tensorstore reports these as unraisable) and passes everything
  else to ``previous``. ``--verbosity=1`` shows them all."""
  def hook(unraisable):
    if not _verbose() and _is_closed_loop_callback(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
      logging.debug("ignored after a failed checkpoint operation: %s", unraisable.exc_value)
      return
    previous(unraisable)
  return hook


def guarded(main):
  """Runs ``main``; every failure a user or the machine can cause becomes one
  ``error:`` line on stderr (the traceback too at ``--verbosity=1``).

  Exit status 2 for a ``UserError`` (bad input, damaged or full storage named with
  its path), 1 for another ``OSError``, 130 for a second Ctrl-C.
  """
  @functools.wraps(main)
  def wrapper(*args):
    previous_hook = sys.unraisablehook
    sys.unraisablehook = quiet_unraisablehook(previous_hook)
    try:
      return main(*args)
    except UserError as e:
      # a config refused before any work abandoned nothing to finalise (a full
      # collection costs a second in a large process)
      _exit_with(str(e), 2, collect=not isinstance(e, ConfigError))
    except OSError as e:  # the file system: unwritable, not a directory, full, ...
      import errno
      writing = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
      _exit_with(os_error_message(e, "write" if writing else "access"), 1)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
      _exit_with("interrupted; the checkpoints already written are intact. Re-run the "
                 "same command to resume.", 130)
    except (AssertionError, RuntimeError) as e:
      problem = backend_problem(e) or thread_problem(e)
      if problem is None:
        raise
      _exit_with(problem, 2)
    finally:
      sys.unraisablehook = previous_hook
  return wrapper


def silence_after_error() -> None:
  """No warnings or ignored exceptions for the rest of the process (its shutdown)."""
  import warnings
  warnings.simplefilter("ignore")
  sys.unraisablehook = lambda unraisable: None


def thread_problem(e: BaseException) -> str | None:
  """One line for a thread the process could not start (a thread limit reached)."""
  if isinstance(e, RuntimeError) and "can't start new thread" in str(e):
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return (f"cannot start a thread: the limit on processes and threads is reached "
            f"(ulimit -u is {limit}, shared by every process of this user). Raise it "
            "(ulimit -u 4096) or stop other processes, then re-run the same command; the "
            "checkpoints already written are intact.")
  return None


MIN_OPEN_FILES = 64  # a checkpoint save opens a few dozen files at once


def raise_open_file_limit() -> None:
  """Lifts the soft limit on open files to the hard one (up to 65536), as many
  programs do; a ``UserError`` when even that is below ``MIN_OPEN_FILES`` (a checkpoint
  save would fail at its first step with EMFILE, or time out waiting for its files)."""
  import resource
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  infinite = resource.RLIM_INFINITY
  wanted = 65536 if hard == infinite else min(hard, 65536)
  if soft != infinite and soft < wanted:
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
      soft = wanted
    except (ValueError, OSError):
      pass
  if soft != infinite and soft < MIN_OPEN_FILES:
    raise UserError(f"the limit on open files is {soft} (ulimit -n); mae_jax needs at least "
                    f"{MIN_OPEN_FILES} (a checkpoint save opens many files at once). Raise it "
                    "with ulimit -n 4096 (and the hard limit, ulimit -Hn, if that is lower).")


def backend_problem(e: BaseException) -> str | None:
  """One line for JAX failing to start its backend (``JAX_PLATFORMS`` naming a platform
  this machine or this JAX install does not have), wherever the command first needed
  it; None for any other error."""
  frames, tb = [], e.__traceback__
  while tb is not None:
    frames.append(tb.tb_frame.f_code.co_filename.replace(os.sep, "/"))
    tb = tb.tb_next
  if not frames or not frames[-1].endswith("jax/_src/xla_bridge.py"):
    return None
  platforms = os.environ.get("JAX_PLATFORMS", "")
  detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  asked = f"JAX_PLATFORMS={platforms}" if platforms else "the default platforms"
  extra = ("tpu" if "tpu" in platforms else
           "cuda12" if "cuda" in platforms or "gpu" in platforms else None)
  install = f"pip install 'jax[{extra}]'" if extra else "its jax plugin"
  return (f"JAX could not start a backend for {asked} ({detail}). Install the JAX "
          f"support for that device ({install}), or run on the CPU with "
          "JAX_PLATFORMS=cpu.")


def check_output(path: str, flag: str, directory: bool) -> None:
  """Fails now, before the long work, when ``path`` cannot be written.

  ``directory``: the output is a directory (else a file). Creates nothing: a probe
  file is made and removed in ``path`` or its nearest existing parent. Remote
  (``gs://``) paths are not checked here.
  """
  if "://" in path:
    return
  path = os.path.abspath(path)
  if directory and os.path.isfile(path):
    raise StorageError(f"{flag}={path} is a file; it must be a directory (or a new path).")
  if not directory and os.path.isdir(path):
    raise StorageError(f"{flag}={path} is a directory; give a file path, e.g. "
                       f"{os.path.join(path, 'out')}.")
  parent = path if directory else os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise StorageError(f"{flag}={path} cannot be created: {parent} is a file, not a "
                       "directory (ENOTDIR); choose another path.")
  import tempfile
  try:
    fd, probe = tempfile.mkstemp(prefix=".mae_jax-write-test-", dir=parent)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    e.filename = parent  # not the probe's name
    raise StorageError(f"{flag}={path}: {os_error_message(e, 'write in')}") from None


def init_distributed(fv: flags.FlagValues):
  """``jax.distributed.initialize`` from the flags or the environment (idempotent)."""
  from mae_jax.parallel import distributed
  distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id,
                         timeout_s=fv.distributed_timeout_s)


class _Quiet(logging.Filter):
  """Console policy: no tracebacks, and no per-thread failure reports of a checkpoint
  write, whose failure reaches the command and is reported once as the ``error:``
  line, and no notice that a checkpoint folder opened for reading is read-only (it
  is opened so on purpose). ``--verbosity=1`` shows everything."""

  def filter(self, record):
    if _verbose():
      return True
    if str(record.msg).startswith("Given directory is read only"):
      return False
    if record.levelno >= logging.ERROR and (
        "orbax" in record.pathname or record.name == "asyncio"):
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def setup_logging():
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout,
                      force=True)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_Quiet())
  for noisy in ("absl", "orbax", "jax._src", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


CONFIG_MODULE = "config_config"  # where ml_collections loads the --config file


class ConfigCommand:
  """A command driven by a config file (pretrain, finetune, linprobe, evaluate):
  flags ``--config``/``--workdir`` (and ``--dry_run`` for training), running
  ``trainer.<entry>(config, workdir)``.

  ``task``: the ``config.task`` (or tasks) the command runs (a classifier config says
  which); ``entry``: the function of the ``trainer`` module it calls.
  """

  def __init__(self, trainer: str, task: str | tuple[str, ...] | None = None,
               entry: str = "train_and_evaluate"):
    self.trainer, self.entry = trainer, entry
    self.tasks = (task,) if isinstance(task, str) else task

  def define_flags(self, fv: flags.FlagValues, argv: list[str]) -> None:
    from ml_collections import config_flags
    # ml_collections executes the file into the module sys.modules keeps under this
    # name: a second command in this process would see the first file's definitions
    # (a file without get_config would run the previous one's)
    sys.modules.pop(CONFIG_MODULE, None)
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (FILE or FILE:ARG, e.g. "
        "configs/pretrain_imagenet.py:variant=L/16).", flag_values=fv, lock_config=True,
        sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Run directory (local or gs://); re-running on it "
                        "resumes.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    if self.entry == "train_and_evaluate":
      flags.DEFINE_bool(
          "dry_run", False, "Print the params/optimizer bytes per device, the compiled "
          "train step's peak memory estimate and whether it fits the device memory "
          "(--config.device_memory_gib overrides the detected size), then exit: nothing "
          "is trained, no data read, the workdir not touched.", flag_values=fv)

  def run(self, fv: flags.FlagValues, args: list[str]) -> int:
    refuse_arguments(args)
    try:
      value = fv.config
      value.keys()  # a file that failed to load gives a stand-in that raises here
    except (OSError, SyntaxError, ImportError) as e:
      raise UserError(config_file_problem(e)) from None
    from mae_jax import config_schema
    try:
      config_schema.check(value)
    except UserError as e:
      raise ConfigError(f"{config_flag(fv)}: {e}") from None
    from mae_jax import fileio
    for key, leaf in config_schema.leaves(value):
      if isinstance(leaf, str):
        fileio.check_bucket(leaf, f"config.{key}")
    tasks = self.tasks
    if tasks is not None and value.get("task") not in tasks:
      found = value.get("task")
      raise UserError(f"--config is {'a ' + found if found else 'not a classifier'} config, "
                      f"not a {' or '.join(tasks)} config; run `mae-jax "
                      f"{found or 'pretrain'}` with it, or give a "
                      f"{' or '.join(f'configs/{t}_*.py' for t in tasks)} file.")
    setup_logging()
    init_distributed(fv)
    import importlib
    trainer = importlib.import_module(self.trainer)
    if "dry_run" in fv and fv.dry_run:
      import json
      import jax
      from mae_jax.parallel import memory
      report = trainer.dry_run(value)
      if jax.process_index() == 0:
        print(f"dry run of {report['task']}: mesh {report['mesh']}, batch "
              f"{report['batch_size']}, step compiled in {report['compile_s']} s")
        print(memory.describe(report))
        print(json.dumps(report, sort_keys=True))
      return 0
    result = getattr(trainer, self.entry)(value, fv.workdir)
    if isinstance(result, dict) and result.get("signal") == "SIGINT":
      print(f"interrupted at step {result['preempted_at']}; checkpoint saved. Re-run the same "
            "command to resume.", file=sys.stderr)
      return 130
    return 0


def config_flag(fv: flags.FlagValues) -> str:
  """``--config=FILE[:ARG]`` as given."""
  return f"--config={fv['config'].config_filename}" if "config" in fv else "--config"


def refuse_arguments(args: list[str]) -> None:
  """A command without positional arguments refuses stray ones (a forgotten ``--``, a
  space inside a flag value) instead of ignoring them."""
  if args:
    raise UserError(f"unexpected argument{'s' if len(args) > 1 else ''} "
                    f"{' '.join(args)}: every input of this command is a --flag=value "
                    "(`--help` lists them).")
