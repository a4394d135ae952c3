"""A TFDS dataset of 13-band images (the layout of ``eurosat/all``: a float32 ``Tensor``
feature ``sentinel2`` of shape [H, W, 13]) built by TFDS itself, read through the
TFDS path: the source, the statistics computed from its training split, and
pretraining from the command line. (TFDS here, torchvision-free: see
tests/test_multispectral.py for the folders and the exports.)"""
import json

import numpy as np
import pytest

from conftest import run_cli
from mae_jax.data import arrays, pipeline

NAME, KEY, BANDS, SIDE = "mae_synthetic_bands", "sentinel2", 13, 16
TRAIN, TEST = 12, 4


def band_image(i: int) -> np.ndarray:
  """Image ``i``: band ``b`` around ``100 * (b + 1) + 10 * i`` (reflectance-like floats)."""
  rng = np.random.default_rng(i)
  base = 100.0 * (np.arange(BANDS) + 1) + 10.0 * i
  return (base + rng.normal(0, 5, (SIDE, SIDE, BANDS))).astype(np.float32)


def build(data_dir: str) -> None:
  import tensorflow_datasets as tfds

  class MaeSyntheticBands(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = NAME
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          KEY: tfds.features.Tensor(shape=(SIDE, SIDE, BANDS), dtype=np.float32),
          "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(range(TRAIN)),
              "test": self._generate_examples(range(TRAIN, TRAIN + TEST))}

    def _generate_examples(self, indices):
      for i in indices:
        yield i, {KEY: band_image(i), "label": i % 2}

  MaeSyntheticBands(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))


@pytest.fixture(scope="module")
def bands_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("bands_tfds"))
  build(data_dir)
  return data_dir


FLAGS = ["--config=configs/pretrain_fmnist.py", f"--config.data.name={NAME}",
         "--config.data.source=tfds", f"--config.data.image_key={KEY}",
         f"--config.data.channels={BANDS}", f"--config.data.image_size={SIDE}",
         "--config.data.split=train", "--config.data.eval_split=test",
         "--config.model.embed_dim=32", "--config.model.depth=1", "--config.model.num_heads=2",
         "--config.model.decoder_embed_dim=32", "--config.model.decoder_depth=1",
         "--config.model.decoder_num_heads=2", "--config.model.patch_size=8",
         "--config.batch_size=4", "--config.num_train_steps=2", "--config.optim.warmup_steps=1",
         "--config.log_every_steps=1", "--config.eval_every_steps=0",
         "--config.num_recon_images=2", "--config.probe.enabled=False",
         "--config.monitor.every_steps=0", "--config.checkpoint.async_save=False"]


@pytest.mark.slow
def test_a_13_band_tfds_dataset_pretrains_with_its_own_statistics(bands_dir, tmp_path):
  workdir = tmp_path / "w"
  run_cli("pretrain", *FLAGS, f"--config.data.data_dir={bands_dir}", f"--workdir={workdir}",
          check=True)
  config = json.loads((workdir / "config.json").read_text())
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  # the statistics are the training split's, per band (float32 pixels: raw units)
  pixels = np.stack([band_image(i) for i in range(TRAIN)]).reshape(-1, BANDS).astype(np.float64)
  np.testing.assert_allclose(config["data"]["mean"], pixels.mean(0), rtol=1e-5)
  np.testing.assert_allclose(config["data"]["std"], pixels.std(0), rtol=1e-4)
  assert any((workdir / "recon").glob("*.png"))


def test_the_source_reads_the_named_feature_and_refuses_a_missing_one(bands_dir, tmp_path):
  from mae_jax import config_lib
  c = config_lib.pretrain_defaults("tiny/4")
  c.data.update(name=NAME, source="tfds", data_dir=bands_dir, image_key=KEY, channels=BANDS,
                image_size=SIDE, split="train", num_threads=0)
  source, mean, std = pipeline.open_checked(c.data, "train")
  assert source.channels == BANDS and source.dtype == np.float32 and source.mean is None
  assert arrays.pixel_scale(source.dtype) == 1.0 and len(mean) == BANDS
  image = np.asarray(source[0]["image"])
  assert image.shape == (SIDE, SIDE, BANDS) and image.dtype == np.float32
  proc = run_cli("pretrain", *FLAGS, f"--config.data.data_dir={bands_dir}",
                 "--config.data.image_key=image", f"--workdir={tmp_path}/w2")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert "has no feature 'image'; its features are" in lines[0] and KEY in lines[0], lines
