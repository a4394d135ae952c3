"""Bad inputs over every subcommand: each ends in exactly one ``error:`` line.

For every row of ``CASES`` the command must exit non-zero, print exactly one line
starting with ``error:`` on stderr, print no ``Traceback`` anywhere (stdout or
stderr, including what the interpreter prints while it shuts down), leave no
output file it was asked to create, and leave the good workdirs (a pretraining
workdir trained once per session, a fine-tuning workdir) byte-identical.

How the cases run, and why it is honest. Starting ``python -m mae_jax`` costs
seconds of imports (jax, orbax, torch) before a case fails in milliseconds, so
a server process (this file run as a script) imports those libraries once,
without touching a device, and then ``fork``s one child per case. The child
calls ``mae_jax.cli.main`` exactly as the console script does, with stdout and
stderr redirected at the file-descriptor level (so C++ logs and anything printed
at interpreter exit are caught too), and ends through the normal interpreter
shutdown (``sys.exit``), not ``os._exit``. Each child is thus a real process with
a fresh command, fresh flags and fresh JAX backend; only the imports are
inherited. Two children run at a time, except that two runs that lock the same
workdir never overlap. Only the cases a session collects run (``-k`` picks some).
The whole file costs about 8-9 CPU-minutes (user + sys of pytest and its children,
the good workdir's training included): most cases fail during validation in well
under a second of CPU; those that build a model, restore a checkpoint or train
(disk full) take seconds each. The broken copies of the good workdir (damaged,
locked, on a full disk) are watched too: a failed run may not delete or alter the
checkpoints they hold.

File-system failures are made without relying on permission bits, which do not
stop root: a path below a regular file (ENOTDIR), a read-only tmpfs mount when
running as root (``chmod 555`` otherwise), and ``/sys`` for "permission denied"
as root (``chmod 000`` otherwise). Disk full is a small tmpfs when root can
mount one; otherwise (no root) the child's Python-level file writes below that
workdir fail with ENOSPC, injected into ``open`` before the command starts (the
checkpoint arrays, written by TensorStore in C++, are then not reached).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import REPO, TINY_FLAGS  # noqa: E402

PRETRAIN = ("pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS)
CLASSIFIER_FLAGS = ("--config.model.embed_dim=32", "--config.model.depth=1",
                    "--config.model.num_heads=2", "--config.model.patch_size=7",
                    "--config.batch_size=32", "--config.data.eval_max_examples=64")
FINETUNE = ("finetune", "--config=configs/finetune_fmnist.py", *CLASSIFIER_FLAGS)
LINPROBE = ("linprobe", "--config=configs/linprobe_fmnist.py", *CLASSIFIER_FLAGS)
EVALUATE = ("evaluate", "--config=configs/finetune_fmnist.py", *CLASSIFIER_FLAGS)
LOCKING = ("pretrain", "finetune", "linprobe", "evaluate")


@dataclasses.dataclass(frozen=True)
class Case:
  """``argv`` of ``mae-jax`` with placeholders (see ``Places``); ``expect``: a regex
  the one ``error:`` line must match; ``env``: environment variables of the case's
  process; ``open_files``: its limit on open files (``ulimit -n``)."""
  id: str
  argv: tuple
  expect: str
  env: tuple = ()
  open_files: int | None = None


def case(id, argv, expect, env=None, open_files=None):
  return Case(id, tuple(argv), expect, tuple(sorted((env or {}).items())), open_files)


# A port nothing listens on (the discard service is not run): connections are refused.
NO_STORAGE = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}


# Placeholders: {good} pretraining workdir, {ft} fine-tuning workdir, {tmp} files made
# by the fixture, {new} a fresh path for this case (must not be left as a finished
# output), {file} a regular file, {ro} a read-only directory, {denied} a directory
# that refuses writes, {full} a copy of {good} on a full disk, {damaged} a copy of {good}
# with truncated array files, {badjson} a copy with a broken config.json, {busy} a
# copy locked by a live process.
CASES = [
    # ------------------------------------------------------------ config files
    case("pretrain/config-missing", ("pretrain", "--config={tmp}/missing.py", "--workdir={new}"),
         "does not exist"),
    case("pretrain/config-syntax", ("pretrain", "--config={tmp}/syntax.py", "--workdir={new}"),
         "syntax error at line 1"),
    case("pretrain/config-no-get-config",
         ("pretrain", "--config={tmp}/empty.py", "--workdir={new}"), "defines no get_config"),
    case("pretrain/config-get-config-raises",
         ("pretrain", "--config={tmp}/raises.py", "--workdir={new}"), "boom"),
    case("pretrain/config-returns-none",
         ("pretrain", "--config={tmp}/none.py", "--workdir={new}"), "get_config.* returned None"),
    case("pretrain/config-bad-arg", ("pretrain", "--config=configs/pretrain_imagenet.py:variant=Q/3",
                                     "--workdir={new}"), "Q/3"),
    case("pretrain/config-a-directory", ("pretrain", "--config=configs", "--workdir={new}"),
         "configs"),
    case("pretrain/no-config-flag", ("pretrain", "--workdir={new}"), "--config"),
    case("pretrain/no-workdir-flag", ("pretrain", "--config=configs/pretrain_fmnist.py"),
         "--workdir"),
    case("pretrain/unknown-flag", (*PRETRAIN, "--workdir={new}", "--bogus=1"), "bogus"),
    case("pretrain/unknown-key", (*PRETRAIN, "--workdir={new}", "--config.model.nope=1"),
         r"unknown config key model\.nope\b.*; no part of mae_jax reads it"),
    case("pretrain/empty-workdir", (*PRETRAIN, "--workdir="), r"--workdir is empty"),
    case("export/blank-out", ("export", "--workdir={good}", "--format=official", "--out=  "),
         r"--out is empty"),
    case("pretrain/misspelt-key", (*PRETRAIN, "--workdir={new}", "--config.model.embeddim=3"),
         r"unknown config key model\.embeddim \(did you mean model\.embed_dim\?\)"),
    case("pretrain/wrong-type", (*PRETRAIN, "--workdir={new}", "--config.batch_size=abc"),
         "abc"),
    # ------------------------------------------------------------ config values
    case("pretrain/batch-zero", (*PRETRAIN, "--workdir={new}", "--config.batch_size=0"),
         "batch_size=0"),
    case("pretrain/batch-negative", (*PRETRAIN, "--workdir={new}", "--config.batch_size=-4"),
         "batch_size=-4"),
    case("pretrain/base-lr-negative", (*PRETRAIN, "--workdir={new}",
                                       "--config.optim.base_lr=-1"), r"base_lr=-1.0 must be a number > 0"),
    case("pretrain/min-lr-negative", (*PRETRAIN, "--workdir={new}", "--config.optim.min_lr=-1"),
         "min_lr"),
    case("pretrain/min-lr-above-peak", (*PRETRAIN, "--workdir={new}", "--config.optim.min_lr=9"),
         "exceeds the peak"),
    case("pretrain/no-length", (*PRETRAIN, "--workdir={new}", "--config.num_train_steps=0",
                                "--config.num_epochs=0"), "num_epochs"),
    case("pretrain/warmup-longer", (*PRETRAIN, "--workdir={new}", "--config.num_train_steps=2",
                                    "--config.optim.warmup_steps=5"), "warmup"),
    case("pretrain/grad-accum", (*PRETRAIN, "--workdir={new}", "--config.num_train_steps=3",
                                 "--config.optim.grad_accum_steps=2"), "grad_accum_steps"),
    case("pretrain/mask-ratio", (*PRETRAIN, "--workdir={new}", "--config.model.mask_ratio=1.5"),
         "mask_ratio"),
    case("pretrain/patch-not-dividing", (*PRETRAIN, "--workdir={new}",
                                         "--config.model.patch_size=5"), "patch"),
    case("pretrain/heads-not-dividing", (*PRETRAIN, "--workdir={new}",
                                         "--config.model.num_heads=3"), "heads"),
    case("pretrain/dtype", (*PRETRAIN, "--workdir={new}", "--config.model.dtype=float7"),
         "float7"),
    case("pretrain/attention", (*PRETRAIN, "--workdir={new}", "--config.model.attention=magic"),
         "magic"),
    case("pretrain/keep-zero", (*PRETRAIN, "--workdir={new}", "--config.checkpoint.keep=0"),
         "keep"),
    case("pretrain/every-zero", (*PRETRAIN, "--workdir={new}",
                                 "--config.checkpoint.every_steps=0"), "every_steps"),
    case("pretrain/log-zero", (*PRETRAIN, "--workdir={new}", "--config.log_every_steps=0"),
         "log_every_steps"),
    case("pretrain/mesh-too-big", (*PRETRAIN, "--workdir={new}", "--config.mesh.data=3"),
         "mesh|device"),
    case("pretrain/distributed-timeout", (*PRETRAIN, "--workdir={new}",
                                          "--distributed_timeout_s=-1"), "distributed_timeout_s"),
    case("pretrain/idx-dir-missing", (*PRETRAIN, "--workdir={new}",
                                      "--config.data.idx_dir={tmp}/no_such_dir"), "no_such_dir"),
    case("pretrain/source-unknown", (*PRETRAIN, "--workdir={new}",
                                     "--config.data.source=ftp"), "ftp"),
    # ------------------------------------------------------------ resuming the good workdir
    case("pretrain/resume-other-width", (*PRETRAIN, "--workdir={good}",
                                         "--config.model.embed_dim=64"), "another model"),
    case("pretrain/resume-other-patch", (*PRETRAIN, "--workdir={good}",
                                         "--config.model.patch_size=4"), "another model"),
    case("pretrain/resume-idx-dir-typo", (*PRETRAIN, "--workdir={good}",
                                          "--config.data.idx_dir={tmp}/typo"), "typo"),
    case("pretrain/resume-damaged", (*PRETRAIN, "--workdir={damaged}",
                                     "--config.num_train_steps=4"), "cannot be read"),
    case("pretrain/workdir-in-use", (*PRETRAIN, "--workdir={busy}", "--config.num_train_steps=4"),
         "in use by pid"),
    # ------------------------------------------------------------ file system
    case("pretrain/workdir-is-a-file", (*PRETRAIN, "--workdir={file}"), "not a directory|a file"),
    case("pretrain/workdir-under-a-file", (*PRETRAIN, "--workdir={file}/w"), "not a directory"),
    case("pretrain/workdir-read-only", (*PRETRAIN, "--workdir={ro}/w"), "read-only|ermission"),
    case("pretrain/workdir-denied", (*PRETRAIN, "--workdir={denied}/w"),
         "ermission|not permitted"),
    # ------------------------------------------------------------ the environment
    case("pretrain/xla-flags-unknown", (*PRETRAIN, "--workdir={new}"),
         r"XLA_FLAGS has --xla_no_such_flag=1, which this XLA .* does not know",
         env={"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_no_such_flag=1"}),
    case("pretrain/open-file-limit", (*PRETRAIN, "--workdir={new}"),
         r"limit on open files is 12 \(ulimit -n\)", open_files=12),
    case("pretrain/gs-workdir-no-route", (*PRETRAIN, "--workdir=gs://mae-jax-test-bucket/w"),
         r"bucket 'mae-jax-test-bucket' cannot be reached: no connection to 127.0.0.1:9",
         env=NO_STORAGE),
    case("pretrain/gs-workdir-unresolvable", (*PRETRAIN, "--workdir=gs://mae-jax-test/w"),
         r"bucket 'mae-jax-test' cannot be reached: .*no-such-host.invalid",
         env={"STORAGE_EMULATOR_HOST": "http://no-such-host.invalid:4443"}),
    case("finetune/gs-init-from-no-route", (*FINETUNE, "--workdir={new}",
                                            "--config.init_from=gs://mae-jax-test/w"),
         r"config.init_from=gs://mae-jax-test/w: bucket 'mae-jax-test' cannot be reached",
         env=NO_STORAGE),
    case("export/gs-out-no-route", ("export", "--workdir={good}", "--format=timm",
                                    "--out=gs://mae-jax-test/m.pth"),
         r"--out=gs://mae-jax-test/m.pth: bucket 'mae-jax-test' cannot be reached",
         env=NO_STORAGE),
    # ------------------------------------------------------------ config values
    case("pretrain/config-arg-not-a-number",
         ("pretrain", "--config=configs/pretrain_fmnist.py:steps=ten", "--workdir={new}"),
         r"--config=configs/pretrain_fmnist.py:steps=ten: config argument steps='ten' must "
         "be an integer"),
    case("pretrain/negative-steps", (*PRETRAIN, "--workdir={new}",
                                     "--config.num_train_steps=-5"),
         r"num_train_steps=-5 must be an integer >= 0"),
    case("pretrain/image-size-zero", (*PRETRAIN, "--workdir={new}",
                                      "--config.data.image_size=0"),
         r"data.image_size=0 must be an integer or a pair of integers"),
    case("pretrain/heads-zero", (*PRETRAIN, "--workdir={new}", "--config.model.num_heads=0"),
         r"model.num_heads=0 must be an integer >= 1"),
    case("pretrain/rrc-scale-reversed", (*PRETRAIN, "--workdir={new}",
                                         "--config.data.augment.rrc_scale=(1.0,0.2)"),
         r"data.augment.rrc_scale=\(1.0, 0.2\) has its bounds reversed"),
    case("import/image-size-zero", ("import", "--in={tmp}/text.pth", "--format=timm",
                                    "--workdir={new}", "--image_size=0"),
         r"--image_size=0"),
    case("pretrain/disk-full", (*PRETRAIN, "--workdir={full}", "--config.num_train_steps=4",
                                "--config.checkpoint.async_save=False"), "No space left"),
    # ------------------------------------------------------------ finetune
    case("finetune/init-from-missing", (*FINETUNE, "--workdir={new}",
                                        "--config.init_from={tmp}/nowhere"), "nowhere"),
    case("finetune/init-from-text-file", (*FINETUNE, "--workdir={new}",
                                          "--config.init_from={tmp}/text.pth"), "text.pth"),
    case("finetune/init-from-empty-dir", (*FINETUNE, "--workdir={new}",
                                          "--config.init_from={tmp}/emptydir"), "emptydir"),
    case("finetune/init-from-other-width", ("finetune", "--config=configs/finetune_fmnist.py",
                                            "--config.model.embed_dim=64",
                                            "--config.model.depth=1", "--config.model.num_heads=2",
                                            "--config.model.patch_size=7",
                                            "--workdir={new}", "--config.init_from={good}"),
         "embed|64|32|shape"),
    case("finetune/linprobe-config", ("finetune", "--config=configs/linprobe_fmnist.py",
                                      "--workdir={new}"), "not a finetune config"),
    case("finetune/pretrain-config", ("finetune", "--config=configs/pretrain_fmnist.py",
                                      "--workdir={new}"), "not a finetune config"),
    case("finetune/num-classes", (*FINETUNE, "--workdir={new}", "--config.num_classes=0"),
         "num_classes"),
    case("finetune/workdir-is-a-file", (*FINETUNE, "--workdir={file}",
                                        "--config.init_from={good}"), "not a directory|a file"),
    case("finetune/resume-other-width", ("finetune", "--config=configs/finetune_fmnist.py",
                                         "--config.model.embed_dim=64", "--config.model.depth=1",
                                         "--config.model.num_heads=2",
                                         "--config.model.patch_size=7", "--workdir={ft}"),
         "another model"),
    # ------------------------------------------------------------ linprobe
    case("linprobe/pretrain-config", ("linprobe", "--config=configs/pretrain_fmnist.py",
                                      "--workdir={new}"), "not a linprobe config"),
    case("linprobe/init-from-missing", (*LINPROBE, "--workdir={new}",
                                        "--config.init_from={tmp}/nowhere"), "nowhere"),
    case("linprobe/batch-zero", (*LINPROBE, "--workdir={new}", "--config.batch_size=0"),
         "batch_size"),
    case("linprobe/workdir-read-only", (*LINPROBE, "--workdir={ro}/p",
                                        "--config.init_from={good}"), "read-only|ermission"),
    # ------------------------------------------------------------ evaluate
    case("evaluate/empty-workdir", (*EVALUATE, "--workdir={tmp}/emptydir"), "no checkpoint"),
    case("evaluate/missing-workdir", (*EVALUATE, "--workdir={new}"), "no checkpoint|does not exist"),
    case("evaluate/pretrain-workdir", (*EVALUATE, "--workdir={good}"), "another model|classifier|pretrain"),
    case("evaluate/other-width", ("evaluate", "--config=configs/finetune_fmnist.py",
                                  "--config.model.embed_dim=64", "--config.model.depth=1",
                                  "--config.model.num_heads=2", "--config.model.patch_size=7",
                                  "--workdir={ft}"), "another model"),
    case("evaluate/pretrain-config", ("evaluate", "--config=configs/pretrain_fmnist.py",
                                      "--workdir={ft}"), "not a finetune or linprobe config"),
    # ------------------------------------------------------------ export
    case("export/missing-workdir", ("export", "--workdir={tmp}/nowhere", "--format=official",
                                    "--out={new}.pth"), "nowhere"),
    case("export/not-a-workdir", ("export", "--workdir={tmp}/emptydir", "--format=official",
                                  "--out={new}.pth"), "not a mae_jax workdir"),
    case("export/bad-format", ("export", "--workdir={good}", "--format=onnx", "--out={new}.pth"),
         "onnx"),
    case("export/missing-out", ("export", "--workdir={good}", "--format=official"), "--out"),
    case("export/missing-step", ("export", "--workdir={good}/checkpoints/99",
                                 "--format=official", "--out={new}.pth"), "99"),
    case("export/broken-config-json", ("export", "--workdir={badjson}", "--format=official",
                                       "--out={new}.pth"), "config.json"),
    case("export/damaged-checkpoint", ("export", "--workdir={damaged}", "--format=official",
                                       "--out={new}.pth"), "cannot be read"),
    case("export/out-is-a-directory", ("export", "--workdir={good}", "--format=official",
                                       "--out={tmp}/emptydir"), "directory"),
    case("export/out-under-a-file", ("export", "--workdir={good}", "--format=official",
                                     "--out={file}/x.pth"), "not a directory"),
    case("export/out-read-only", ("export", "--workdir={good}", "--format=official",
                                  "--out={ro}/x.pth"), "read-only|ermission"),
    case("export/out-denied", ("export", "--workdir={good}", "--format=timm",
                               "--out={denied}/x.pth"), "ermission|not permitted"),
    case("export/hf-out-is-a-file", ("export", "--workdir={good}", "--format=hf",
                                     "--out={file}"), "file"),
    case("export/classifier-out-read-only", ("export", "--workdir={ft}", "--format=timm",
                                             "--out={ro}/c"), "read-only|ermission"),
    # ------------------------------------------------------------ import
    case("import/missing-in", ("import", "--in={tmp}/nowhere.pth", "--format=official",
                               "--workdir={new}"), "does not exist"),
    case("import/text-as-pth", ("import", "--in={tmp}/text.pth", "--format=official",
                                "--workdir={new}"), "text.pth"),
    case("import/empty-pth", ("import", "--in={tmp}/empty.pth", "--format=official",
                              "--workdir={new}"), "empty.pth"),
    case("import/random-bytes-pth", ("import", "--in={tmp}/random.pth", "--format=official",
                                     "--workdir={new}"), "random.pth"),
    case("import/text-as-safetensors", ("import", "--in={tmp}/text.safetensors",
                                        "--format=timm", "--workdir={new}"), "safetensors"),
    case("import/random-safetensors", ("import", "--in={tmp}/random.safetensors",
                                       "--format=timm", "--workdir={new}"), "safetensors"),
    case("import/pickled-code", ("import", "--in={tmp}/code.pth", "--format=official",
                                 "--workdir={new}"), "refus"),
    case("import/tensor-not-dict", ("import", "--in={tmp}/tensor.pth", "--format=official",
                                    "--workdir={new}"), "not a state dict"),
    case("import/list-not-dict", ("import", "--in={tmp}/list.pth", "--format=official",
                                  "--workdir={new}"), "not a state dict"),
    case("import/nan-weights", ("import", "--in={tmp}/nan.pth", "--format=official",
                                "--workdir={new}"), r"blocks\.0\.attn\.qkv\.weight"),
    case("import/inf-weights", ("import", "--in={tmp}/inf.pth", "--format=official",
                                "--workdir={new}"), r"norm\.weight"),
    case("import/nan-safetensors", ("import", "--in={tmp}/nan_hf", "--format=hf",
                                    "--workdir={new}"), "non-finite|NaN"),
    case("import/wrong-shape", ("import", "--in={tmp}/shape.pth", "--format=official",
                                "--workdir={new}"), "shape"),
    case("import/wrong-format", ("import", "--in={tmp}/good.pth", "--format=hf",
                                 "--workdir={new}"), "official"),
    case("import/hf-dir-without-weights", ("import", "--in={tmp}/emptydir", "--format=hf",
                                           "--workdir={new}"), "Hugging Face"),
    case("import/directory-as-pth", ("import", "--in={tmp}/emptydir", "--format=official",
                                     "--workdir={new}"), "directory"),
    case("import/broken-sidecar", ("import", "--in={tmp}/sidecar.pth", "--format=official",
                                   "--workdir={new}"), "sidecar.json"),
    case("import/into-good-workdir", ("import", "--in={tmp}/good.pth", "--format=official",
                                      "--workdir={good}"), "already holds a workdir"),
    case("import/workdir-is-a-file", ("import", "--in={tmp}/good.pth", "--format=official",
                                      "--workdir={file}"), "not a directory|a file"),
    case("import/workdir-read-only", ("import", "--in={tmp}/good.pth", "--format=official",
                                      "--workdir={ro}/w"), "read-only|ermission"),
    case("import/bad-image-size", ("import", "--in={tmp}/good.pth", "--format=official",
                                   "--workdir={new}", "--image_size=30"), "30"),
    # ------------------------------------------------------------ visualize
    case("visualize/missing-workdir", ("visualize", "--workdir={tmp}/nowhere", "--out={new}.png"),
         "nowhere"),
    case("visualize/classifier-workdir", ("visualize", "--workdir={ft}", "--out={new}.png"),
         "pretrain|classifier|MAE"),
    case("visualize/out-is-a-directory", ("visualize", "--workdir={good}",
                                          "--out={tmp}/emptydir"), "directory"),
    case("visualize/out-under-a-file", ("visualize", "--workdir={good}",
                                        "--out={file}/x.png"), "not a directory"),
    case("visualize/out-read-only", ("visualize", "--workdir={good}", "--out={ro}/x.png"),
         "read-only|ermission"),
    case("visualize/num-images-zero", ("visualize", "--workdir={good}", "--out={new}.png",
                                       "--num_images=0"), "num_images"),
    case("visualize/num-images-negative", ("visualize", "--workdir={good}", "--out={new}.png",
                                           "--num_images=-3"), "num_images"),
    case("visualize/bad-split", ("visualize", "--workdir={good}", "--out={new}.png",
                                 "--split=validation"), "validation"),
    case("visualize/damaged-checkpoint", ("visualize", "--workdir={damaged}",
                                          "--out={new}.png"), "cannot be read"),
    # ------------------------------------------------------------ prepare
    case("prepare/no-dataset-flag", ("prepare", "--data_dir={new}"), "--dataset"),
    case("prepare/bad-file-format", ("prepare", "--dataset=mnist", "--data_dir={new}",
                                     "--file_format=zip"), "zip"),
    case("prepare/unknown-dataset", ("prepare", "--dataset=no_such_dataset_xyz",
                                     "--data_dir={new}"), "no_such_dataset_xyz"),
    case("prepare/convert-nothing-prepared", ("prepare", "--dataset=mnist",
                                              "--data_dir={new}", "--convert"),
         "no prepared mnist"),
    # ------------------------------------------------------------ analyze
    case("analyze/missing-workdir", ("analyze", "--workdir={tmp}/nowhere", "--out={new}"),
         "nowhere"),
    case("analyze/out-is-a-file", ("analyze", "--workdir={good}", "--out={file}"),
         "not a directory|a file"),
    case("analyze/out-read-only", ("analyze", "--workdir={good}", "--out={ro}/a"),
         "read-only|ermission"),
    case("analyze/out-denied", ("analyze", "--workdir={good}", "--out={denied}/a"),
         "ermission|not permitted"),
    case("analyze/num-images-one", ("analyze", "--workdir={good}", "--out={new}",
                                    "--num_images=1"), "num_images"),
    case("analyze/mask-ratios-text", ("analyze", "--workdir={good}", "--out={new}",
                                      "--mask_ratios=a,b"), "mask_ratios"),
    case("analyze/mask-ratio-one", ("analyze", "--workdir={good}", "--out={new}",
                                    "--mask_ratios=1.0"), "mask_ratios"),
    case("analyze/compare-missing", ("analyze", "--workdir={good}", "--out={new}",
                                     "--compare={tmp}/nowhere"), "nowhere"),
    case("analyze/jacobian-zero", ("analyze", "--workdir={good}", "--out={new}",
                                   "--jacobian_images=0"), "jacobian_images"),
    case("analyze/classifier-workdir", ("analyze", "--workdir={ft}", "--out={new}"),
         "pretrain|classifier|MAE"),
]


# ====================================================================== server
# ``python tests/test_bad_inputs.py`` reads {"cases": [[id, argv]...], "out": DIR,
# "watch": [DIR...]} on stdin, runs every case in a forked child and writes one JSON
# line per case on stdout.

CASE_TIMEOUT_S = 600
PRELOAD = ("jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint", "grain",
           "absl.app", "absl.flags", "ml_collections.config_flags", "PIL.Image", "torch",
           "safetensors.numpy", "mae_jax.cli", "mae_jax.train.loop",
           "mae_jax.train.pretrain", "mae_jax.train.classifier", "mae_jax.export",
           "mae_jax.export.classifier", "mae_jax.analysis", "mae_jax.viz")


def tree_digest(path: str) -> dict:
  """{relative path: sha256} of the files under ``path``: all but the TensorBoard logs
  and the lock a concurrent case holds while it runs (none may stay behind: see
  ``test_no_lock_is_left_behind``)."""
  out = {}
  for root, dirs, files in os.walk(path):
    dirs.sort()
    rel_root = os.path.relpath(root, path)
    if rel_root.split(os.sep)[0] in ("tensorboard",):
      continue
    for name in sorted(files):
      full = os.path.join(root, name)
      if name == ".lock":
        continue
      with open(full, "rb") as f:
        out[os.path.normpath(os.path.join(rel_root, name))] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def _inject_enospc(prefix: str):
  """Makes ``open`` for writing below ``prefix`` fail as on a full disk."""
  import builtins
  import errno
  real_open = builtins.open

  def full_open(file, mode="r", *args, **kwargs):
    if (isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax+")
        and os.path.abspath(os.fspath(file)).startswith(prefix)):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
    return real_open(file, mode, *args, **kwargs)
  builtins.open = full_open


def _child(argv: list, out_dir: str, name: str, enospc_under: str | None = None,
           env: dict | None = None, open_files: int | None = None):
  """In the forked child: run ``mae-jax ARGV`` with fd 1/2 in files (and ``env``, and
  ``open_files`` as both limits on open files), then exit normally."""
  os.chdir(REPO)
  os.environ.update(env or {})
  if open_files:
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  for fd, suffix in ((1, "out"), (2, "err")):
    target = os.open(os.path.join(out_dir, f"{name}.{suffix}"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)
  if enospc_under:
    _inject_enospc(enospc_under)
  from mae_jax import cli
  sys.argv = ["mae-jax", *argv]
  cli.main()  # raises SystemExit like the console script; shutdown runs as usual
  sys.exit(0)


def serve():
  request = json.load(sys.stdin)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import importlib
  for module in PRELOAD:
    importlib.import_module(module)
  from jax._src import xla_bridge
  assert not xla_bridge.backends_are_initialized(), "the server must not start a backend"
  out_dir, watch = request["out"], request["watch"]
  pending = list(request["cases"])
  running = {}  # pid -> (index, id, lock key, start)
  while pending or running:
    busy = {key for _, _, key, _ in running.values() if key}
    while pending and len(running) < request.get("parallel", 2):
      pick = next((i for i, c in enumerate(pending) if not c[2] or c[2] not in busy), None)
      if pick is None:
        break
      index, argv, key, enospc_under, env, open_files = pending.pop(pick)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(argv, out_dir, str(index), enospc_under, env, open_files)
      running[pid] = (index, argv, key, time.time())
      busy.add(key)
    pid, status, usage = os.wait4(-1, os.WNOHANG)
    if pid == 0:
      for pid, (index, _, _, start) in running.items():
        if time.time() - start > CASE_TIMEOUT_S:
          os.kill(pid, 9)
      time.sleep(0.05)
      continue
    index, argv, key, start = running.pop(pid)
    print(json.dumps({"index": index, "rc": os.waitstatus_to_exitcode(status),
                      "seconds": time.time() - start,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "digests": {w: tree_digest(w) for w in watch}}), flush=True)


if __name__ == "__main__":
  serve()
  sys.exit(0)


# ====================================================================== tests
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # every test here trains or starts processes


class Places:
  """The paths the placeholders name, made once per session."""

  def __init__(self, root: str):
    self.root = root
    self.tmp = os.path.join(root, "files")
    self.mounts: list[str] = []
    self.enospc_under = None
    os.makedirs(self.tmp)

  def mount_tmpfs(self, path: str, options: str) -> bool:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
      return False
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                        capture_output=True).returncode == 0
    if ok:
      self.mounts.append(path)
    return ok

  def unmount(self):
    for path in reversed(self.mounts):
      subprocess.run(["umount", path], capture_output=True)


def _write_files(places: Places, good: str):
  import numpy as np
  import torch
  tmp = places.tmp
  with open(os.path.join(tmp, "syntax.py"), "w") as f:
    f.write("def get_config(:\n")
  with open(os.path.join(tmp, "empty.py"), "w") as f:
    f.write("x = 1\n")
  with open(os.path.join(tmp, "raises.py"), "w") as f:
    f.write("def get_config(arg=None):\n  raise ValueError('boom')\n")
  with open(os.path.join(tmp, "none.py"), "w") as f:
    f.write("def get_config(arg=None):\n  return None\n")
  os.makedirs(os.path.join(tmp, "emptydir"))
  with open(os.path.join(tmp, "text.pth"), "w") as f:
    f.write("hello, I am not a checkpoint\n")
  shutil.copy(os.path.join(tmp, "text.pth"), os.path.join(tmp, "text.safetensors"))
  open(os.path.join(tmp, "empty.pth"), "wb").close()
  rng = np.random.default_rng(0)
  for name in ("random.pth", "random.safetensors"):
    with open(os.path.join(tmp, name), "wb") as f:
      f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
  import argparse
  torch.save({"model": {"w": torch.zeros(2)}, "hook": argparse.ArgumentParser},
             os.path.join(tmp, "code.pth"))
  torch.save(torch.zeros(3), os.path.join(tmp, "tensor.pth"))
  torch.save([1, 2, 3], os.path.join(tmp, "list.pth"))
  # A good official export, then broken copies of it.
  import mae_jax
  from mae_jax import export
  loaded = mae_jax.load(good)
  export.save(loaded.params, loaded.config, "official", os.path.join(tmp, "good.pth"))
  export.save(loaded.params, loaded.config, "hf", os.path.join(tmp, "nan_hf"))
  sd = torch.load(os.path.join(tmp, "good.pth"), weights_only=True)["model"]
  for name, key, value in (("nan", "blocks.0.attn.qkv.weight", float("nan")),
                           ("inf", "norm.weight", float("inf"))):
    broken = {k: v.clone() for k, v in sd.items()}
    broken[key][0] = value
    torch.save({"model": broken}, os.path.join(tmp, f"{name}.pth"))
    shutil.copy(os.path.join(tmp, "good.json"), os.path.join(tmp, f"{name}.json"))
  shape = dict(sd)
  shape["decoder_pred.weight"] = shape["decoder_pred.weight"][:5]
  torch.save({"model": shape}, os.path.join(tmp, "shape.pth"))
  shutil.copy(os.path.join(tmp, "good.json"), os.path.join(tmp, "shape.json"))
  shutil.copy(os.path.join(tmp, "good.pth"), os.path.join(tmp, "sidecar.pth"))
  with open(os.path.join(tmp, "sidecar.json"), "w") as f:
    f.write("{not json")
  from safetensors.numpy import load_file, save_file
  weights = os.path.join(tmp, "nan_hf", "model.safetensors")
  tensors = load_file(weights)
  first = sorted(tensors)[0]
  tensors[first] = np.full_like(tensors[first], np.nan)
  save_file(tensors, weights, metadata={"format": "pt"})


def _copies(places: Places, good: str) -> dict:
  """{damaged, badjson, busy, full}: copies of the good workdir broken in one way each."""
  out = {}
  damaged = out["damaged"] = os.path.join(places.root, "damaged")
  shutil.copytree(good, damaged)
  for root, _, files in os.walk(os.path.join(damaged, "checkpoints")):
    if os.sep + "d" in root[len(damaged):]:
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(8)
  badjson = out["badjson"] = os.path.join(places.root, "badjson")
  shutil.copytree(good, badjson)
  with open(os.path.join(badjson, "config.json"), "w") as f:
    f.write('{"model": ')
  busy = out["busy"] = os.path.join(places.root, "busy")
  shutil.copytree(good, busy)
  import socket
  with open(os.path.join(busy, ".lock"), "w") as f:  # held by this (live) process
    json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}, f)
  full = out["full"] = os.path.join(places.root, "full", "w")
  # tmpfs pages are 4 KiB: room for the copy and its metrics, not for a new checkpoint
  used = sum(-(-os.path.getsize(os.path.join(r, n)) // 4096) * 4096 + 4096
             for r, _, fs in os.walk(good) for n in fs + ["."])
  if not places.mount_tmpfs(os.path.dirname(full), f"size={used + 96 * 1024}"):
    places.enospc_under = full  # not root: ENOSPC injected into the case's writes
  shutil.copytree(good, full)
  return out


def _unwritable(places: Places) -> dict:
  """{ro, denied}: a read-only directory and one that refuses writes with EACCES/EPERM."""
  ro = os.path.join(places.root, "ro")
  if not places.mount_tmpfs(ro, "ro,size=64k"):
    os.chmod(ro, 0o555)
  if os.geteuid() == 0:
    denied = "/sys/mae_jax_bad_inputs"
  else:
    denied = os.path.join(places.root, "denied")
    os.makedirs(denied)
    os.chmod(denied, 0)
  for path in (ro, denied):
    try:
      os.makedirs(os.path.join(path, "probe"))
    except OSError:
      continue
    raise RuntimeError(f"{path} accepts writes; the unwritable-path cases need one that "
                       "does not.")
  return {"ro": ro, "denied": denied}


@pytest.fixture(scope="session")
def good_workdirs(tmp_path_factory, fmnist_available):
  """A tiny pretraining workdir trained for 2 steps, and a fine-tuning one."""
  from conftest import load_config, tiny_overrides
  from mae_jax.train import pretrain
  root = tmp_path_factory.mktemp("good")
  good = str(root / "pretrain")
  pretrain.train_and_evaluate(tiny_overrides(load_config("pretrain_fmnist"), steps=2),
                              good)
  ft = str(root / "finetune")
  shutil.copytree(os.path.join(HERE, "fixtures", "workdirs_v0_1", "finetune"), ft)
  return good, ft


@pytest.fixture(scope="session")
def results(good_workdirs, tmp_path_factory, request):
  """Runs the selected cases; {id: (result, stdout, stderr, paths)} plus the initial
  digests. Only the cases this session collected run (``-k`` selects them)."""
  good, ft = good_workdirs
  selected = {item.callspec.params["c"].id for item in request.session.items
              if hasattr(item, "callspec") and "c" in item.callspec.params}
  places = Places(str(tmp_path_factory.mktemp("bad")))
  try:
    _write_files(places, good)
    names = {"good": good, "ft": ft, "tmp": places.tmp,
             "file": os.path.join(places.tmp, "text.pth"),
             **_copies(places, good), **_unwritable(places)}
    # Nothing may change in the good workdirs; in the broken copies, nothing but the
    # metrics and config a resumed run rewrites (a full disk keeps its checkpoints).
    watch = [good, ft, names["damaged"], names["badjson"], names["busy"],
             os.path.join(names["full"], "checkpoints")]
    before = {w: tree_digest(w) for w in watch}
    requests, expanded = [], {}
    for index, c in enumerate(CASES):
      if c.id not in selected:
        continue
      new = os.path.join(places.root, "new", re.sub(r"\W", "_", c.id))
      argv = [a.format(new=new, **names) for a in c.argv]
      workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), "")
      key = workdir if c.argv[0] in LOCKING else ""
      full = places.enospc_under if "{full}" in "".join(c.argv) else None
      requests.append([index, argv, key, full, dict(c.env), c.open_files])
      expanded[c.id] = (argv, new)
    out_dir = os.path.join(places.root, "output")
    os.makedirs(out_dir)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], cwd=REPO, text=True,
        input=json.dumps({"cases": requests, "out": out_dir, "watch": watch}),
        capture_output=True, timeout=1800)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-5000:]
    rows = {}
    with open(os.path.join(places.root, "results.jsonl"), "w") as f:
      f.write(proc.stdout)  # rc, wall and CPU seconds per case, for a look afterwards
    for line in proc.stdout.splitlines():
      row = json.loads(line)
      c = CASES[row["index"]]
      with open(os.path.join(out_dir, f"{row['index']}.out")) as f:
        stdout = f.read()
      with open(os.path.join(out_dir, f"{row['index']}.err")) as f:
        stderr = f.read()
      rows[c.id] = (row, stdout, stderr, expanded[c.id])
    yield rows, before
  finally:
    places.unmount()


def test_the_table_is_large_and_covers_every_command():
  from mae_jax import cli
  assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
  assert {c.argv[0] for c in CASES} == set(cli.COMMANDS)


def test_no_lock_is_left_behind(results, good_workdirs):
  rows, _ = results
  assert rows  # the cases ran
  for workdir in good_workdirs:
    assert not os.path.exists(os.path.join(workdir, ".lock")), workdir


def _finished_outputs(new: str) -> list[str]:
  """What a failed case left at its fresh path that looks like a finished result."""
  found = [p for p in (new + ".pth", new + ".json", new + ".png") if os.path.exists(p)]
  if os.path.isfile(new):
    found.append(new)
  elif os.path.isdir(new):
    for name in ("config.json", "report.md", "analysis.json", "model.safetensors"):
      if os.path.exists(os.path.join(new, name)):
        found.append(os.path.join(new, name))
    ckpts = os.path.join(new, "checkpoints")
    if os.path.isdir(ckpts):
      found += [os.path.join(ckpts, d) for d in os.listdir(ckpts) if d.isdigit()]
  return found


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c, results):
  rows, before = results
  row, stdout, stderr, (argv, new) = rows[c.id]
  shown = f"mae-jax {' '.join(argv)}\nrc={row['rc']}\n{stdout[-3000:]}\n{stderr[-3000:]}"
  assert row["rc"] not in (0, None), shown
  assert "Traceback" not in stdout + stderr, shown
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, shown
  after = stderr.split(errors[0], 1)[1]
  assert not after.strip(), f"printed after the error line:\n{shown}"
  assert re.search(c.expect, errors[0], re.IGNORECASE), (c.expect, errors[0])
  assert not _finished_outputs(new), f"left behind as if finished: {_finished_outputs(new)}"
  for workdir, digest in before.items():
    assert row["digests"][workdir] == digest, f"{workdir} changed\n{shown}"


def test_stray_closed_loop_callbacks_are_quiet_and_nothing_else_is():
  """A tensorstore future that completes after the event loop awaiting it closed
  (what a failed checkpoint read or write leaves behind) is reported as unraisable;
  the CLI's hook drops exactly that and passes on everything else."""
  import asyncio
  import threading
  import tensorstore as ts
  from mae_jax.commands import common
  passed_on, reported = [], []
  quiet = common.quiet_unraisablehook(passed_on.append)
  previous = sys.unraisablehook
  sys.unraisablehook = lambda u: (reported.append(str(u.exc_value)), quiet(u))
  try:
    promise, future = ts.Promise.new()
    loop = asyncio.new_event_loop()

    async def wait():
      await future
    task = loop.create_task(wait())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    thread = threading.Thread(target=promise.set_result, args=(1,))
    thread.start()
    thread.join()

    class Broken:
      def __del__(self):
        raise ValueError("another failure")
    Broken()
  finally:
    sys.unraisablehook = previous
    import gc
    import logging
    logging.getLogger("asyncio").disabled = True  # "Task was destroyed but it is pending"
    del task
    gc.collect()
    logging.getLogger("asyncio").disabled = False
  assert "Event loop is closed" in reported
  assert [str(u.exc_value) for u in passed_on] == ["another failure"]
