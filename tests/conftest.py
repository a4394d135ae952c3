"""Tests run on the CPU with tiny models; multi-device tests start subprocesses."""
import functools
import importlib.util
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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


def run_cli(*args, env=None, timeout=300, check=False):
  """Runs ``python -m mae_jax ARGS`` and returns the CompletedProcess."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-m", "mae_jax", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"mae-jax {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


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


@pytest.fixture(scope="session")
def fmnist_available():
  from mae_jax.data.sources import DEBIAN_FASHION_MNIST
  if not os.path.isdir(DEBIAN_FASHION_MNIST):
    raise RuntimeError(f"{DEBIAN_FASHION_MNIST} is missing: run `make dataset` "
                       "(apt-get install dataset-fashion-mnist) before the tests.")
  return DEBIAN_FASHION_MNIST


from gcs_emulator import gcs, gcs_server  # noqa: E402,F401  (fixtures)
