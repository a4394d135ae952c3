"""Input pipeline: real Fashion-MNIST IDX files, determinism, resumption, host split."""
import gzip
import os

import numpy as np
import pytest

from conftest import load_config
from mae_jax.data import augment, pipeline, sources
from mae_jax.errors import DataError


def test_fashion_mnist_idx_is_real_data(fmnist_available):
  train = sources.fashion_mnist_idx(fmnist_available, "train")
  test = sources.fashion_mnist_idx(fmnist_available, "test")
  assert len(train) == 60000 and len(test) == 10000
  assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8
  assert sorted(np.unique(train.labels)) == list(range(10))
  assert abs(train.images.mean() / 255 - sources.FASHION_MNIST_MEAN[0]) < 0.002
  assert abs(train.images.std() / 255 - sources.FASHION_MNIST_STD[0]) < 0.002


def _batches(config, n, **kw):
  it = pipeline.train_iterator(config.data, global_batch=config.batch_size, seed=3, **kw)
  return [next(it) for _ in range(n)], it


def test_same_seed_same_batches_and_exact_resume(fmnist_available):
  config = load_config("pretrain_fmnist")
  config.batch_size = 16
  first, _ = _batches(config, 4)
  again, it = _batches(config, 2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  state = it.get_state()
  resumed = pipeline.train_iterator(config.data, global_batch=16, seed=3)
  resumed.set_state(state)
  for want in first[2:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  assert first[0]["image"].shape == (16, 28, 28, 1) and first[0]["image"].dtype == np.uint8
  assert not np.array_equal(first[0]["image"], first[1]["image"])


def test_processes_read_disjoint_halves(fmnist_available):
  config = load_config("pretrain_fmnist")
  config.data.augment.update(rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=False)
  ds0, _ = pipeline.train_dataset(config.data, global_batch=8, seed=0, process_index=0,
                                  process_count=2)
  ds1, _ = pipeline.train_dataset(config.data, global_batch=8, seed=0, process_index=1,
                                  process_count=2)
  a, b = ds0[0]["image"], ds1[0]["image"]
  assert a.shape == (4, 28, 28, 1)
  assert not any(np.array_equal(x, y) for x in a for y in b)
  # the halves are the global batch of a single process: independent of the split
  whole, _ = pipeline.train_dataset(config.data, global_batch=8, seed=0)
  np.testing.assert_array_equal(np.concatenate([a, b]), whole[0]["image"])
  rows, _ = pipeline.train_dataset(config.data, global_batch=8, seed=0, rows=(1, 6))
  np.testing.assert_array_equal(rows[1]["image"], whole[1]["image"][[1, 6]])


def test_rrc_box_follows_torchvision_bounds():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = augment.rrc_box(rng, 375, 500, (0.2, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
    assert 0.2 * 375 * 500 * 0.95 <= h * w <= 375 * 500
  img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
  out = augment.random_resized_crop(img, rng, 32)
  assert out.shape == (32, 32, 1) and out.dtype == np.uint8


def test_grayscale_to_three_channels_and_normalisation(fmnist_available):
  config = load_config("pretrain_fmnist")
  config.data.channels = 3
  images, labels = pipeline.eval_arrays(config.data, "test", 5)
  assert images.shape == (5, 28, 28, 3)
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  raw = sources.fashion_mnist_idx(fmnist_available, "test").images[:5, ..., 0]
  np.testing.assert_allclose(images[..., 0], (raw / 255 - 0.2860) / 0.3530, rtol=1e-5,
                             atol=1e-5)


def test_missing_dataset_is_a_clear_error(tmp_path):
  config = load_config("pretrain_fmnist")
  config.data.update(source="idx", idx_dir=str(tmp_path))
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
    pipeline.train_iterator(config.data, global_batch=8, seed=0)


def test_truncated_idx_file_is_a_clear_error(tmp_path, fmnist_available):
  for name in os.listdir(fmnist_available):
    data = open(os.path.join(fmnist_available, name), "rb").read()
    if name.startswith("train-images"):
      raw = gzip.decompress(data)[:5000]
      data = gzip.compress(raw)
    open(tmp_path / name, "wb").write(data)
  config = load_config("pretrain_fmnist")
  config.data.update(source="idx", idx_dir=str(tmp_path))
  with pytest.raises(DataError, match="truncated or corrupt"):
    pipeline.train_iterator(config.data, global_batch=8, seed=0)
