"""``mae-jax COMMAND [flags]`` (also ``python -m mae_jax``).

Each command is a module in ``mae_jax.commands`` that defines its absl flags and a
``main(argv)``; only the chosen one is imported, so flags never collide and a
command pays only for its own imports. Errors the user can fix (``UserError``)
print as one line and exit with status 2.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pretrain": "Pretrain an MAE (resumes from the workdir's latest checkpoint).",
    "finetune": "Fine-tune a pretrained encoder as a classifier.",
    "linprobe": "Linear probe on frozen encoder features.",
    "evaluate": "Top-1/top-5 of a fine-tuned or probed workdir.",
    "export": "Export a workdir to PyTorch (official, timm, hf).",
    "import": "Build a workdir from PyTorch weights.",
    "visualize": "Write a reconstruction grid PNG.",
    "analyze": "Measure the theory paper's claims on a trained model.",
    "prepare": "Build a TFDS dataset (e.g. imagenet2012 from its archives), or --convert one.",
}


def usage() -> str:
  lines = ["usage: mae-jax COMMAND [--flags]", "", "commands:"]
  lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
  lines += ["", "`mae-jax COMMAND --helpfull` lists a command's flags."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"mae-jax: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    sys.exit(2)
  # `import` is a Python keyword, so its module has another name.
  module_name = {"import": "import_weights"}.get(command, command)
  module = importlib.import_module(f"mae_jax.commands.{module_name}")
  from absl import app
  from mae_jax.commands import common
  app.run(common.guarded(module.main), argv=[f"mae-jax {command}"] + argv[2:],
          flags_parser=common.parse_flags_or_exit)


if __name__ == "__main__":
  main()
