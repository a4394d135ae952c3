"""``mae-jax COMMAND [flags]`` (also ``python -m mae_jax``), and the same in-process.

Each command is a module in ``mae_jax.commands`` with a docstring (its usage line,
then its purpose), ``define_flags(fv, argv)`` declaring its flags on a
``FlagValues`` made for this one run, and ``run(fv, args)`` doing the work. Only the
chosen module is imported, and nothing is defined at import time, so a command can
run any number of times in one process, beside any other:

    from mae_jax import cli
    status = cli.run(["pretrain", "--config=configs/pretrain_fmnist.py", "--workdir=w"])

``run`` returns the exit status a terminal run gives and prints the same output
(errors a user can fix as one ``error:`` line on stderr, status 2).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pretrain": "Pretrain an MAE (resumes from the workdir's latest checkpoint).",
    "finetune": "Fine-tune a pretrained encoder as a classifier.",
    "linprobe": "Linear probe on frozen encoder features.",
    "evaluate": "Top-1/top-5 of a fine-tuned or probed workdir.",
    "export": "Export a workdir to PyTorch (official, timm, hf, videomae).",
    "import": "Build a workdir from PyTorch weights.",
    "visualize": "Write a reconstruction grid PNG.",
    "analyze": "Measure the theory paper's claims on a trained model.",
    "prepare": "Build a TFDS dataset (e.g. imagenet2012 from its archives), or --convert one.",
}

HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")

# How config overrides work, for the help of the commands that take --config.
CONFIG_HELP = """\
config overrides:
  --config.KEY=VALUE sets any key of the config after the file is loaded, e.g.
  --config.batch_size=512 --config.optim.base_lr=1e-4 --config.model.mask_ratio=0.9;
  a config file can take an argument after a colon:
  --config=configs/pretrain_imagenet.py:variant=L/16,runlocal.
  The keys and their meaning: README.md "Configs" and docs/training.md; the
  values of an experiment: its file in configs/. An unknown key is an error."""


def usage() -> str:
  lines = ["usage: mae-jax COMMAND [--flags]", "", "commands:"]
  lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
  lines += ["", "`mae-jax COMMAND --help` describes a command and lists its flags."]
  return "\n".join(lines)


def command_module(command: str):
  # `import` is a Python keyword, so its module has another name.
  return importlib.import_module(
      f"mae_jax.commands.{ {'import': 'import_weights'}.get(command, command)}")


def _flag_lines(fv, names) -> list[str]:
  from absl import flags
  lines = []
  for name in names:
    flag = fv[name]
    if isinstance(flag, flags.BooleanFlag):
      spelled = f"--[no]{name}"
    else:
      spelled = f"--{name}"
    required = flag.default is None and bool(flag.validators)  # mark_flags_as_required
    default = ("required" if required else
               f"default: {(flag.default_as_str or 'none').strip(chr(39))}")
    lines.append(f"  {spelled}  ({default})")
    lines += [f"      {line}" for line in _wrap(flag.help)]
  return lines


def _wrap(text: str) -> list[str]:
  import textwrap
  return textwrap.wrap(" ".join(text.split()), 78) or [""]


def command_help(command: str, module, fv) -> str:
  """The command's usage and purpose (its docstring), its flags with their defaults,
  the flags every command takes, and for config commands how overrides work."""
  from mae_jax.commands import common
  usage_line, _, details = (module.__doc__ or "").strip().partition("\n\n")
  own = [name for name in _flag_names(fv) if name not in common.PROCESS_FLAGS]
  parts = [f"usage: {usage_line}", "", COMMANDS[command]]
  if details.strip():
    parts += ["", details.strip()]
  parts += ["", "flags:", *_flag_lines(fv, own), "",
           "flags of every command (multi-process runs, tracebacks):",
           *_flag_lines(fv, common.PROCESS_FLAGS)]
  if "config" in own:
    parts += ["", CONFIG_HELP]
  return "\n".join(parts)


def _flag_names(fv) -> list[str]:
  """Flag names in the order they were defined, each once (not short names)."""
  seen, names = set(), []
  for name in fv:
    flag = fv[name]
    if flag.name == name and id(flag) not in seen:
      seen.add(id(flag))
      names.append(name)
  return names


def run(argv: list[str]) -> int:
  """Runs ``mae-jax ARGV`` (``argv`` without the program name) in this process and
  returns its exit status."""
  argv = list(argv)
  if not argv or argv[0] in HELP_FLAGS + ("help",):
    print(usage())
    return 0 if argv else 2
  command = argv[0]
  if command not in COMMANDS:
    print(f"{usage()}\n", file=sys.stderr)
    import difflib
    close = difflib.get_close_matches(command, COMMANDS, n=1)
    print(f"error: unknown command {command!r}"
          f"{f' (did you mean {close[0]}?)' if close else ''}; the commands are "
          f"{', '.join(COMMANDS)}.", file=sys.stderr)
    return 2
  from absl import flags
  from mae_jax.commands import common
  module = command_module(command)
  prog = f"mae-jax {command}"
  fv = flags.FlagValues()
  common.define_process_flags(fv)
  module.define_flags(fv, [prog, *argv[1:]])
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(command_help(command, module, fv))
    return 0
  # Libraries (Orbax) read the process-wide absl flags: they must count as parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  try:
    args = common.parse_flags_or_exit(fv, [prog, *argv[1:]])
    common.set_verbosity(fv.verbosity)
    return common.guarded(common.checked_environment(module.run))(fv, args[1:]) or 0
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    common.set_verbosity(0)


def main(argv: list[str] | None = None) -> None:
  """The console script: ``run`` with the process's arguments, then exit."""
  from mae_jax.commands import common
  argv = list(sys.argv if argv is None else argv)
  # Stray callbacks of a failed checkpoint operation can surface at interpreter
  # shutdown, after ``run`` returned: keep them quiet for the whole process.
  sys.unraisablehook = common.quiet_unraisablehook(sys.unraisablehook)
  verbose = any(a.startswith(("--verbosity=", "-v=")) and not a.endswith("=0")
                for a in argv[1:])
  code = run(argv[1:])
  if code not in (0, None) and not verbose:
    # The error line was the last word: what an abandoned operation leaves for the
    # interpreter's shutdown (coroutines never awaited, event loops half built)
    # would print after it.
    common.silence_after_error()
  sys.exit(code)


if __name__ == "__main__":
  main()
