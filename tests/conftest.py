"""Tests run on the CPU with tiny models; what needs real processes starts them.

Every process of a test run (pytest-xdist's workers and the processes tests start)
shares one JAX persistent compilation cache, made for the run in the temporary
folder and removed at its end (or ``JAX_COMPILATION_CACHE_DIR`` when set): many
tests compile the same tiny steps. XLA's CPU code generation runs without its
expensive LLVM passes (``TEST_XLA_FLAGS``): the tiny programs of the tests compile
in about half the time and compute the same numbers, only less optimised.
``MAE_JAX_TEST_XLA_OPT=1`` keeps XLA's defaults. Markers (``pytest.ini``): ``gcs``,
``torch`` and ``multiprocess`` are read from each test's code (the hook at the end
of this file), ``slow`` is written on the test.
"""
import collections
import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("MAE_JAX_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in \
    os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()
_OWN_CACHE = None  # the cache folder this process made (and removes at the end)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # pytest-xdist's workers and the processes tests start inherit it: one per run
  _OWN_CACHE = tempfile.mkdtemp(prefix="mae_jax-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# cache every program, however small or quick to compile
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
import mae_jax  # noqa: E402,F401  (chooses the gs:// client before any test touches a path)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """``get_config(arg)`` of ``configs/<name>.py``."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def training_rows(workdir) -> list[dict]:
  """The training rows of ``workdir/metrics.jsonl`` (evaluation and monitor rows have
  no loss)."""
  from mae_jax.train import metrics
  return metrics.training_rows(str(workdir))


def tiny_overrides(config, steps: int = 8, batch: int = 32):
  """Shrinks a Fashion-MNIST config to seconds on a CPU."""
  config.model.update(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                      decoder_depth=1, decoder_num_heads=2, patch_size=7)
  config.batch_size = batch
  config.num_train_steps = steps
  config.log_every_steps = 1
  config.eval_every_steps = 0
  config.num_recon_images = 4
  config.checkpoint.update(every_steps=4, keep=3, async_save=False)
  config.probe.enabled = False
  return config


def tiny_classifier(name: str, steps: int = 4, batch: int = 32, init_from: str = ""):
  """``configs/<name>_fmnist.py`` (finetune / linprobe) shrunk to seconds on a CPU."""
  config = load_config(f"{name}_fmnist", f"steps={steps}")
  config.model.update(embed_dim=32, depth=1, num_heads=2, patch_size=7)
  config.batch_size = batch
  config.data.eval_max_examples = 64
  config.log_every_steps = 1
  config.checkpoint.update(every_steps=steps, keep=1, async_save=False)
  config.init_from = init_from
  return config


_SYNTHETIC = {}


def synthetic_jpeg_tfds(root: str, num_images: int = 12, shape=(48, 64),
                        file_format: str = "array_record"):
  """``benchmarks/input_pipeline.py`` (the module) after it wrote a TFDS dataset of
  synthetic JPEGs (the same for every call) under ``root/tfds``."""
  if "bench" not in _SYNTHETIC:  # once: its TFDS builder registers a dataset name
    spec = importlib.util.spec_from_file_location(
        "bench_input_pipeline", os.path.join(REPO, "benchmarks", "input_pipeline.py"))
    _SYNTHETIC["bench"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_SYNTHETIC["bench"])
  bench = _SYNTHETIC["bench"]
  bench.write_dataset(root, num_images, shape=shape, file_format=file_format)
  return bench


SYNTHETIC_VIDEO = "mae_synthetic_video"


def synthetic_frames(clip: int, length: int, shape=(16, 20)) -> np.ndarray:
  """uint8 ``[length, H, W, 3]``: channel 0 of frame ``f`` is ``f`` everywhere and
  channel 1 is ``clip``, so a clip's frames survive any crop and resize with their
  index readable; channel 2 is a pattern of the position alone, the same in every
  frame, so equal channels 2 mean the same crop and flip."""
  h, w = shape
  yy, xx = np.mgrid[:h, :w]
  pattern = ((37 * xx + 11 * yy * yy + 5 * clip) % 251).astype(np.uint8)
  frames = np.empty((length, h, w, 3), np.uint8)
  frames[..., 0] = np.arange(length, dtype=np.uint8)[:, None, None]
  frames[..., 1] = clip
  frames[..., 2] = pattern
  return frames


@functools.cache
def _video_builder_class():
  import tensorflow_datasets as tfds

  class MaeSyntheticVideo(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Clips of ``synthetic_frames`` with label ``clip % 3``: PNG frames, no ffmpeg."""
    name = SYNTHETIC_VIDEO
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, lengths=(), test_lengths=(), shape=(16, 20), **kwargs):
      self._lengths, self._test_lengths, self._shape = lengths, test_lengths, shape
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "video": tfds.features.Video(shape=(None, *self._shape, 3)),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(self._lengths),
              "test": self._generate_examples(self._test_lengths)}

    def _generate_examples(self, lengths):
      for clip, length in enumerate(lengths):
        yield clip, {"video": synthetic_frames(clip, length, self._shape),
                     "label": clip % 3}

  return MaeSyntheticVideo


def synthetic_video_tfds(data_dir: str, lengths, test_lengths=(5, 9), shape=(16, 20)):
  """Builds the ``mae_synthetic_video`` TFDS dataset (ArrayRecord) in ``data_dir``:
  clip ``i`` of split train has ``lengths[i]`` frames of ``synthetic_frames(i, ...)``."""
  import tensorflow_datasets as tfds
  builder = _video_builder_class()(lengths=tuple(lengths), test_lengths=tuple(test_lengths),
                                   shape=shape, data_dir=data_dir,
                                   file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return SYNTHETIC_VIDEO


TINY_FLAGS = [
    "--config.model.embed_dim=32", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.model.decoder_embed_dim=32", "--config.model.decoder_depth=1",
    "--config.model.decoder_num_heads=2", "--config.model.patch_size=7",
    "--config.batch_size=32", "--config.log_every_steps=1", "--config.eval_every_steps=0",
    "--config.num_recon_images=4", "--config.probe.enabled=False",
]


def run_cli(*args, env=None, timeout=300, check=False, process=False):
  """Runs ``mae-jax ARGS``; returns a CompletedProcess (returncode, stdout, stderr).

  In this process (``mae_jax.cli.run``, with the repository as the working directory
  and stdout/stderr captured) unless ``process`` or ``env`` asks for a real
  ``python -m mae_jax`` process: what only a process shows (signals, C++ logs, the
  interpreter's shutdown, another device count) needs one. An exception that escapes
  the command is exit status 1 with its traceback on stderr, as in a terminal.
  """
  if process or env:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "mae_jax", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
  else:
    proc = _run_cli_in_process(list(args))
  if check and proc.returncode != 0:
    raise AssertionError(f"mae-jax {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def _run_cli_in_process(args: list) -> subprocess.CompletedProcess:
  from mae_jax import cli
  out, err = io.StringIO(), io.StringIO()
  root = logging.getLogger()
  handlers, level, cwd = list(root.handlers), root.level, os.getcwd()
  os.chdir(REPO)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = cli.run(args)
      except Exception:  # noqa: BLE001  (a terminal prints it and exits 1)
        traceback.print_exc()
        code = 1
  finally:
    os.chdir(cwd)
    for handler in list(root.handlers):  # the command's console handler, on ``out``
      root.removeHandler(handler)
    for handler in handlers:
      root.addHandler(handler)
    root.setLevel(level)
  return subprocess.CompletedProcess(["mae-jax", *args], code, out.getvalue(), err.getvalue())


def eight_device_report(script: str, timeout: int = 400) -> dict:
  """Runs ``python SCRIPT`` on 8 fake CPU devices; the JSON of its last stdout line.

  Compiles dominate; XLA's cheaper CPU pipeline halves them.
  """
  import json
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  proc = subprocess.run([sys.executable, os.path.abspath(script)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def fmnist_available():
  from mae_jax.data.sources import DEBIAN_FASHION_MNIST
  if not os.path.isdir(DEBIAN_FASHION_MNIST):
    raise RuntimeError(f"{DEBIAN_FASHION_MNIST} is missing: run `make dataset` "
                       "(apt-get install dataset-fashion-mnist) before the tests.")
  return DEBIAN_FASHION_MNIST


from gcs_emulator import gcs, gcs_server  # noqa: E402,F401  (fixtures)


# ------------------------------------------------------------------ markers
# What a test needs or costs, read from its code so a new test is marked without
# being told: ``gcs`` (uses the emulator's fixtures), ``torch`` (imports PyTorch,
# timm or transformers), ``multiprocess`` (starts processes). Each is looked for in
# the test's own source, in the module-level functions it calls by name and in its
# fixtures' sources; ``torch`` also in the module's top-level imports. ``slow`` is
# written on the tests themselves (pytest.ini says what it means).
_NEEDS = {
    "torch": re.compile(r"^\s*(import (torch|timm|transformers)\b|from (torch|timm|transformers)"
                        r"\b)|importorskip\(\"(torch|timm|transformers)", re.M),
    "multiprocess": re.compile(r"subprocess\.(run|Popen)|process=True|\benv=(?!None)"
                               r"|eight_device_report\("),
}


def _source(obj) -> str:
  try:
    return inspect.getsource(obj)
  except (OSError, TypeError):
    return ""


@functools.cache
def _module_sources(module) -> tuple[str, dict]:
  text = _source(module)
  functions = {name: _source(f) for name, f in vars(module).items()
               if inspect.isfunction(f) and getattr(f, "__module__", None) == module.__name__}
  return text, functions


def _code_of(item, fixtures_from_skip=()) -> str:
  """The test's source and its fixtures' (but those of modules in
  ``fixtures_from_skip``), with the module-level functions either calls by name."""
  own = [_source(item.function)]
  own += [_source(d.func) for defs in item._fixtureinfo.name2fixturedefs.values()
          for d in defs if not d.func.__module__.startswith(("_pytest", *fixtures_from_skip))]
  text = "\n".join(own)
  _, functions = _module_sources(item.module)
  called = [src for name, src in functions.items()
            if name != item.function.__name__ and re.search(rf"\b{name}\(", text)]
  return "\n".join([text, *called])


def pytest_collection_modifyitems(config, items):
  for item in items:
    if not isinstance(item, pytest.Function):
      continue
    module_text, _ = _module_sources(item.module)
    top_level = "\n".join(l for l in module_text.splitlines() if not l.startswith((" ", "\t")))
    if {"gcs", "gcs_server"} & set(item.fixturenames):
      item.add_marker("gcs")
    if _NEEDS["torch"].search(_code_of(item)) or _NEEDS["torch"].search(top_level):
      item.add_marker("torch")
    # (the emulator is a process of its own, but not one of ours)
    if _NEEDS["multiprocess"].search(_code_of(item, ("gcs_emulator",))):
      item.add_marker("multiprocess")
  # Files with the most slow tests first: pytest-xdist hands files to its workers in
  # this order, so the longest start early and the workers end together.
  slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
  items.sort(key=lambda item: -slow[item.path])
