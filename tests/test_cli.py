"""The command line as a library: per-command flags and help, commands in-process."""
import importlib
import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_FLAGS, run_cli
from mae_jax import cli


def test_every_command_module_imports_beside_the_others():
  """Nothing is defined at import (it raised DuplicateFlagError when two did)."""
  modules = [cli.command_module(name) for name in cli.COMMANDS]
  for module in modules:
    importlib.reload(module)
    assert callable(module.define_flags) and callable(module.run)


def test_top_level_help_lists_every_command(capsys):
  assert cli.run(["--help"]) == 0
  out = capsys.readouterr().out
  for name, summary in cli.COMMANDS.items():
    assert f"  {name:<10} {summary}" in out
  assert cli.run([]) == 2  # no command: the same usage, but it is a mistake


def test_an_unknown_command_is_one_error_line(capsys):
  assert cli.run(["pretrian", "--workdir=w"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: unknown command 'pretrian' (did you mean pretrain?)")
  assert sum(line.startswith("error:") for line in err) == 1
  assert cli.run(["xyzzy"]) == 2  # nothing close: the list alone
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
      "error: unknown command 'xyzzy'; the commands are ")


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_command_help_shows_purpose_flags_and_defaults(command, capsys):
  from absl import flags
  assert cli.run([command, "--help"]) == 0
  out = capsys.readouterr().out
  module = cli.command_module(command)
  assert out.startswith(f"usage: mae-jax {command}")
  assert cli.COMMANDS[command] in out
  fv = flags.FlagValues()
  module.define_flags(fv, ["mae-jax"])
  for name in fv:
    flag = fv[name]
    if flag.name != name:
      continue
    spelled = f"--[no]{name}" if isinstance(flag, flags.BooleanFlag) else f"--{name}"
    line = next((l for l in out.splitlines() if l.startswith(f"  {spelled}  (")), None)
    assert line is not None, f"{spelled} missing from `mae-jax {command} --help`:\n{out}"
    if flag.default is not None and not flag.validators:
      assert f"default: {flag.default_as_str.strip(chr(39))}" in line
  for name in ("coordinator_address", "num_processes", "process_id", "verbosity"):
    assert f"  --{name}  (" in out
  assert ("--config.KEY=VALUE" in out) == ("config" in fv)


def test_pretrain_help_in_a_terminal():
  proc = subprocess.run([sys.executable, "-m", "mae_jax", "pretrain", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  for flag in ("--config  (required)", "--workdir  (required)", "--[no]dry_run  (default: false)"):
    assert flag in proc.stdout
  assert "docs/training.md" in proc.stdout and "--config.KEY=VALUE" in proc.stdout


def test_commands_run_in_process_twice_and_beside_each_other(tmp_path, fmnist_available):
  """pretrain twice (the second without the first's override), an error between them,
  then another command: each gets fresh flags and the terminal's exit status."""
  base = ("pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
          "--config.num_train_steps=2", "--config.checkpoint.every_steps=2")
  first = run_cli(*base, f"--workdir={tmp_path / 'a'}", "--config.seed=7", check=True)
  assert "step 2/2" in first.stdout
  bad = run_cli(*base, f"--workdir={tmp_path / 'bad'}", "--config.batch_size=0")
  assert bad.returncode == 2
  assert [l for l in bad.stderr.splitlines() if l.strip()] == [
      "error: --config=configs/pretrain_fmnist.py: batch_size=0 must be an integer >= 1."]
  run_cli(*base, f"--workdir={tmp_path / 'b'}", check=True)
  seeds = [json.loads((tmp_path / w / "config.json").read_text())["seed"] for w in "ab"]
  assert seeds == [7, 0]  # the second run did not inherit the first's --config.seed
  out = tmp_path / "official.pth"
  exported = run_cli("export", f"--workdir={tmp_path / 'a'}", "--format=official",
                     f"--out={out}", check=True)
  assert out.exists() and (tmp_path / "official.json").exists()
  stray = run_cli("export", f"--workdir={tmp_path / 'a'}", "--format=official",
                  f"--out={out}", "extra")
  assert stray.returncode == 2 and stray.stderr.strip().startswith(
      "error: unexpected argument extra")
  # a multi-process run cannot join from a process that already runs JAX on its own
  joined = run_cli(*base, f"--workdir={tmp_path / 'c'}", "--coordinator_address=127.0.0.1:1",
                   "--num_processes=2", "--process_id=0")
  errors = [l for l in joined.stderr.splitlines() if l.startswith("error:")]
  assert joined.returncode == 2 and len(errors) == 1, joined.stderr[-2000:]
  assert "needs a Python process of its own" in errors[0]
  assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("platform,argv", [
    ("cuda", ("pretrain", "--config=configs/pretrain_fmnist.py", "--workdir={out}")),
    ("tpu", ("finetune", "--config=configs/finetune_fmnist.py", "--workdir={out}")),
])
def test_a_platform_jax_cannot_start_is_one_error_line(platform, argv, tmp_path):
  """A process of its own: JAX starts its backend once per process."""
  out = tmp_path / "w"
  proc = run_cli(*(a.format(out=out) for a in argv), env={"JAX_PLATFORMS": platform})
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert f"JAX could not start a backend for JAX_PLATFORMS={platform}" in errors[0]
  assert proc.stderr.strip().splitlines()[-1] == errors[0]  # nothing after it
  assert not out.exists()


def test_a_thread_limit_reached_is_one_error_line(tmp_path, monkeypatch, fmnist_available):
  """Python's own error for a thread the OS refuses (``ulimit -u`` reached; root is not
  held to it, so the refusal is made in ``threading``) becomes one line naming the
  limit, wherever in the command the thread was started."""
  import threading

  def refused(self):
    raise RuntimeError("can't start new thread")
  monkeypatch.setattr(threading.Thread, "start", refused)
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
                 "--config.num_train_steps=1", f"--workdir={tmp_path}/w")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith(
      "error: cannot start a thread: the limit on processes and threads is reached "
      "(ulimit -u is "), lines


def test_bad_xla_flags_are_one_error_line_before_xla_aborts(tmp_path, monkeypatch):
  """XLA aborts the process with a C++ fatal log on an unknown ``XLA_FLAGS`` entry; the
  command finds it first (a child process starts a CPU backend with the same flags)."""
  from mae_jax.commands import common
  monkeypatch.setenv("HOME", str(tmp_path))  # a fresh cache of checked values
  monkeypatch.setenv("XLA_FLAGS", "--xla_no_such_flag=1")
  monkeypatch.setattr(common, "_XLA_FLAGS_CHECKED", set())
  with pytest.raises(common.UserError, match=r"XLA_FLAGS has --xla_no_such_flag=1, which "
                     r"this XLA \(jaxlib [\d.]+\) does not know"):
    common.check_xla_flags()
  good = "--xla_backend_optimization_level=0"
  monkeypatch.setenv("XLA_FLAGS", good)
  common.check_xla_flags()
  assert good in common._XLA_FLAGS_CHECKED
  assert len(list((tmp_path / ".cache" / "mae_jax" / "xla_flags_ok").iterdir())) == 1
