"""The config schema (``mae_jax.config_schema``): every key of every shipped config is
declared, every declared key is refused with one ``error:`` line naming it for a value
of the wrong type and for one outside its range, through the commands users run
(in this process), before anything is read, compiled or written."""
import functools
import glob
import json
import os

import pytest

from conftest import REPO, load_config, run_cli
from mae_jax import config_lib, config_schema
from mae_jax.config_schema import BOOL, FLOAT, FLOATS, INT, PAIR, SCHEMA, SIZE, STR
from mae_jax.errors import ConfigError

# Shipped configs holding every declared key between them; the first that has a key
# is the base of its cases (the command is the config's task).
BASES = ("pretrain_fmnist", "finetune_fmnist", "linprobe_fmnist", "pretrain_video_fmnist")
CONFIG_ARGS = {"pretrain_imagenet": ("runlocal", "variant=L/16", "target=hog,runlocal",
                                     "target=teacher,runlocal", "contrastive=0.045,runlocal"),
               "pretrain_fmnist": ("target=hog", "target=teacher", "contrastive=0.1"),
               "finetune_imagenet": ("runlocal",), "linprobe_imagenet": ("runlocal",),
               "pretrain_video_kinetics": ("runlocal",)}


def leaves(config) -> dict:
  return dict(config_schema.leaves(config))


def shipped_configs():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    for arg in (None,) + CONFIG_ARGS.get(name, ()):
      yield f"{name}:{arg}" if arg else name, load_config(name, arg)


@functools.cache
def base_keys(name: str) -> frozenset:
  return frozenset(leaves(load_config(name)))


def base_of(key: str) -> str:
  return next(name for name in BASES if key in base_keys(name))


def command_of(base: str) -> str:
  return base.split("_")[0]


def wrong_type(rule):
  """A value of another type than the rule's (as a config file could set it)."""
  return {INT: "7", FLOAT: "0.5", BOOL: "yes", STR: 3, PAIR: 0.5, FLOATS: "0.5",
          SIZE: [32, 32.5]}[rule.kind]


def out_of_range(rule) -> list[str]:
  """Command-line values of the right type that the rule must refuse ([] when every
  value of the type is valid)."""
  allowed = rule.allowed()
  if allowed is not None:
    return ["nonesuch"]
  if rule.kind in (INT, FLOAT):
    if rule.low is not None:
      step = 1 if rule.kind == INT else 0.5
      return [str(rule.low if rule.low_open else rule.low - step)]
    return [str(rule.high + 1)] if rule.high is not None else []
  if rule.kind == PAIR:
    low = rule.low if rule.low is not None else 0.5
    return [f"({low + 0.5},{low + 0.25})",  # reversed
            f"({low - 0.5 if not rule.low_open else low},{low + 0.25})"]
  if rule.kind == SIZE:  # a square, and a pair (given as (h,w) on the command line)
    low = int(rule.low)
    return [str(low - 1), f"({low - 1},{low + 31})", f"({low + 31},{low - 1})"]
  if rule.kind == FLOATS:
    return [f"({rule.low if rule.low_open else rule.low - 1},)"] if rule.low is not None else []
  if rule.kind == STR and not rule.blank:
    return [""]
  if rule.kind == STR and rule.check is not None:
    return ["bogus"]
  return []


def one_error_line(proc, key: str) -> str:
  assert proc.returncode == 2, (key, proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), (key, lines)
  assert any(f"{key}{end}" in lines[0] for end in ("=", " ", ";")), (key, lines[0])
  return lines[0]


def test_every_shipped_config_passes_and_every_key_is_declared():
  for name, config in shipped_configs():
    config_schema.check(config)
    unknown = set(leaves(config)) - set(SCHEMA)
    assert not unknown, (name, unknown)
  # and every declared key is one a task reads, or in a section some runs have
  required = set().union(*(config_schema.required_keys(t)
                           for t in ("pretrain", "finetune", "linprobe")))
  optional = {k for k in SCHEMA if k.startswith(config_schema.OPTIONAL_SECTIONS)}
  assert set(SCHEMA) == required | optional, set(SCHEMA) ^ (required | optional)


@pytest.fixture(scope="module")
def bad_config_file(tmp_path_factory):
  """A config file whose ``get_config(N)`` is case N of ``cases.json``: a shipped
  config written as a plain dict (as a config file may be) with one value replaced."""
  root = tmp_path_factory.mktemp("schema")
  path = root / "bad_config.py"
  path.write_text(f'''
import importlib.util, json, os
import ml_collections

def get_config(arg):
  case = json.load(open(os.path.join(os.path.dirname(__file__), "cases.json")))[int(arg)]
  spec = importlib.util.spec_from_file_location(
      "base", os.path.join({REPO!r}, "configs", case["base"] + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  values = module.get_config(None).to_dict()
  *parents, last = case["key"].split(".")
  node = values
  for part in parents:
    node = node.setdefault(part, {{}})
  if case.get("delete"):
    del node[last]
  else:
    node[last] = case["value"]
  return ml_collections.ConfigDict(values)
''')
  return path


def write_cases(path, cases):
  (path.parent / "cases.json").write_text(json.dumps(cases))


def test_every_key_refuses_a_wrong_type_in_one_line(bad_config_file, tmp_path):
  cases = [dict(key=key, base=base_of(key), value=wrong_type(rule))
           for key, rule in SCHEMA.items()]
  write_cases(bad_config_file, cases)
  for i, case in enumerate(cases):
    workdir = tmp_path / f"w{i}"
    proc = run_cli(command_of(case["base"]), f"--config={bad_config_file}:{i}",
                   f"--workdir={workdir}", "--dry_run")
    line = one_error_line(proc, case["key"])
    assert "must be" in line, line
    assert not workdir.exists()


def test_every_key_refuses_a_value_out_of_its_range_in_one_line(tmp_path):
  unchecked = []
  for key, rule in SCHEMA.items():
    values = out_of_range(rule)
    if not values:
      unchecked.append(key)
    base = base_of(key)
    for value in values:
      proc = run_cli(command_of(base), f"--config=configs/{base}.py", f"--config.{key}={value}",
                     f"--workdir={tmp_path}/w", "--dry_run")
      one_error_line(proc, key)
  assert not (tmp_path / "w").exists()
  # what takes any value of its type: switches, paths, and the fixed statistics
  assert all(SCHEMA[k].kind == BOOL or k in ("data.mean", "init_from", "compile_cache_dir",
                                              "data.data_dir", "data.idx_dir")
             for k in unchecked), unchecked


def test_a_misspelt_or_missing_key_in_a_config_file_is_one_line(bad_config_file, tmp_path):
  write_cases(bad_config_file, [
      dict(key="model.embeddim", base="pretrain_fmnist", value=64),
      dict(key="optim.warmup_step", base="finetune_fmnist", value=5),
      dict(key="seed", base="pretrain_fmnist", delete=True),
  ])
  for i, (key, command, expected) in enumerate([
      ("model.embeddim", "pretrain", "(did you mean model.embed_dim?)"),
      ("optim.warmup_step", "finetune", "(did you mean optim.warmup_steps?)"),
      ("seed", "pretrain", "the config has no seed; a pretrain config needs it")]):
    proc = run_cli(command, f"--config={bad_config_file}:{i}", f"--workdir={tmp_path}/w")
    line = one_error_line(proc, key)
    assert expected in line, line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("base,overrides,expected", [
    ("pretrain_fmnist", ["data.image_size=30"],
     "data.image_size=30 is not divisible by model.patch_size=4; use a multiple of 4 "
     "(e.g. 32 or 28)"),
    ("pretrain_fmnist", ["data.image_size=(28,30)"],
     "data.image_size=(28, 30) has a side 30 that is not divisible by model.patch_size=4"),
    ("pretrain_fmnist", ["data.image_size=28x30"],
     "data.image_size=(28, 30) has a side 30 that is not divisible"),
    ("finetune_fmnist", ["data.channels=4", "data.augment.rand_augment=rand-m9-mstd0.5-inc1"],
     "RandAugment works on 1 or 3-channel photos"),
    ("pretrain_fmnist", ["model.num_heads=3"],
     "model.embed_dim=128 is not divisible by model.num_heads=3"),
    ("pretrain_fmnist", ["model.decoder_num_heads=5"],
     "model.decoder_embed_dim=64 is not divisible by model.decoder_num_heads=5"),
    ("pretrain_fmnist", ["model.embed_dim=66", "model.num_heads=2"],
     "model.embed_dim=66 must be divisible by 4 for the 2-D sin-cos position table"),
    ("pretrain_fmnist", ["num_train_steps=0", "num_epochs=0"], "the run has no length"),
    ("pretrain_fmnist", ["num_train_steps=10", "optim.warmup_steps=11"],
     "optim.warmup_steps=11 is longer than the run (num_train_steps=10)"),
    ("pretrain_imagenet", ["optim.warmup_epochs=900"],
     "optim.warmup_epochs=900 is longer than the run (num_epochs=800)"),
    ("pretrain_fmnist", ["optim.grad_accum_steps=3"],
     "batch_size=128 is not divisible by optim.grad_accum_steps=3"),
    ("pretrain_fmnist", ["monitor.k=4000"], "monitor.bank_size=2000 is smaller than monitor.k=4000"),
    ("pretrain_fmnist", ["data.mean=(0.5,)"], "data.mean and data.std go together"),
    ("pretrain_fmnist", ["data.mean=(0.5,0.5)", "data.std=(0.2,0.2)"],
     "has 2 values for data.channels=1"),
    ("pretrain_fmnist", ["model.masking=tube"], "model.masking=tube needs a video model"),
    ("pretrain_video_fmnist", ["data.video.num_frames=5"],
     "data.video.num_frames=5 is not divisible by model.tubelet_size=2"),
    ("pretrain_video_fmnist", ["model.embed_dim=72", "model.num_heads=2"],
     "must be divisible by 16 for the 3-D sin-cos position table"),
    ("pretrain_fmnist", ["model.tubelet_size=2"], "has no data.video section"),
    ("finetune_fmnist", ["data.augment.mixup=0.8", "batch_size=63"],
     "batch_size=63 is odd, but mixup/cutmix"),
    ("linprobe_fmnist", ["model.drop_path=0.1"], "model.drop_path must be 0 for the linear probe"),
    ("finetune_video_fmnist", ["data.augment.rand_augment=rand-m9-mstd0.5-inc1"],
     "works on images, not clips"),
    ("linprobe_video_fmnist", ["model.pool=cls"], "model.pool=cls but the model has no cls token"),
])
def test_rules_between_keys(base, overrides, expected, tmp_path):
  proc = run_cli(command_of(base), f"--config=configs/{base}.py",
                 *[f"--config.{o}" for o in overrides], f"--workdir={tmp_path}/w", "--dry_run")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and expected in lines[0], lines
  assert lines[0].startswith(f"error: --config=configs/{base}.py: "), lines[0]
  assert not (tmp_path / "w").exists()


def test_a_size_that_is_no_int_or_pair_on_the_command_line_is_one_line(tmp_path):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py",
                 "--config.data.image_size=(28,30,2)", f"--workdir={tmp_path}/w", "--dry_run")
  line = one_error_line(proc, "data.image_size")
  assert "must be an integer or a pair of integers (height, width)" in line, line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("arg,expected", [
    ("steps=ten", "config argument steps='ten' must be an integer (e.g. steps=1200)"),
    ("steps=-5", "num_train_steps=-5 must be an integer >= 0"),
    ("stepz=10", "unknown config argument 'stepz'; known: steps, variant"),
    ("variant=Q/16", "unknown model size 'Q'"),
])
def test_the_config_files_argument_is_checked_and_named(arg, expected, tmp_path):
  proc = run_cli("pretrain", f"--config=configs/pretrain_fmnist.py:{arg}",
                 f"--workdir={tmp_path}/w")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines == [f"error: --config=configs/pretrain_fmnist.py:{arg}: {expected}."] or (
      len(lines) == 1 and lines[0].startswith(
          f"error: --config=configs/pretrain_fmnist.py:{arg}: ") and expected in lines[0]), lines
  bool_arg = config_lib.parse_arg("runlocal", runlocal=False)
  assert bool_arg.runlocal is True
  with pytest.raises(ConfigError, match="runlocal='maybe' must be true or false"):
    config_lib.parse_arg("runlocal=maybe", runlocal=False)


def test_the_python_api_checks_the_schema_too():
  """``train_and_evaluate`` / ``dry_run`` called from Python meet the same rules."""
  from mae_jax.train import classifier, pretrain
  config = load_config("pretrain_fmnist")
  config.data.image_size = 0
  with pytest.raises(ConfigError, match=r"data.image_size=0 must be an integer or a pair of "
                     r"integers \(height, width\), each >= 1"):
    pretrain.dry_run(config)
  config = load_config("finetune_fmnist")
  config.optim.layer_decay = 0.0
  with pytest.raises(ConfigError, match=r"optim.layer_decay=0.0 must be a number in \(0, 1\]"):
    classifier.dry_run(config)
