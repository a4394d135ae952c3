"""Lazy JPEG decoding: same boxes and pixels as decoding first, reduced decodes only
where the crop allows, and the TFDS source + grain pipeline using it."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_jpeg_tfds
from mae_jax.data import augment, jpeg
from mae_jax.errors import DataError


def photo(height, width, seed=0):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
  return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def encode(image, quality=90):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def test_draft_scale_only_when_the_crop_stays_at_least_output_size():
  assert jpeg.draft_scale(375, 500, 224) == 1      # ImageNet-size crops: full decode
  assert jpeg.draft_scale(448, 448, 224) == 2
  assert jpeg.draft_scale(447, 900, 224) == 1
  assert jpeg.draft_scale(900, 1000, 224) == 4
  assert jpeg.draft_scale(2000, 1800, 224) == 8


def test_full_decode_path_is_identical_to_decode_then_augment():
  data = encode(photo(375, 500))
  decoded = jpeg.decode(data)
  assert decoded.shape == (375, 500, 3) and decoded.dtype == np.uint8
  for seed in range(5):
    want = augment.random_resized_crop(decoded, np.random.default_rng(seed), 224)
    got = jpeg.random_resized_crop(data, np.random.default_rng(seed), 224)
    np.testing.assert_array_equal(got, want)


def test_reduced_decode_is_close_and_draws_the_same_random_numbers():
  data = encode(photo(1200, 1600, seed=1))
  decoded = jpeg.decode(data)
  for seed in range(3):
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    # large crops, so the decode is reduced 1/2 .. 1/4
    want = augment.random_resized_crop(decoded, rng_a, 224, scale=(0.6, 1.0))
    got = jpeg.random_resized_crop(data, rng_b, 224, scale=(0.6, 1.0))
    assert got.shape == want.shape == (224, 224, 3)
    diff = np.abs(got.astype(np.float32) - want)
    assert diff.mean() < 3.0, diff.mean()
    assert rng_a.random() == rng_b.random()  # the generators stay in step


def test_grey_output_and_grey_jpegs():
  colour = encode(photo(64, 80))
  grey = jpeg.random_resized_crop(colour, np.random.default_rng(0), 32, channels=1)
  assert grey.shape == (32, 32, 1)
  want = augment.random_resized_crop(
      np.asarray(Image.open(io.BytesIO(colour)).convert("L"))[..., None],
      np.random.default_rng(0), 32)
  assert np.abs(grey.astype(np.float32) - want).mean() < 2.0
  buf = io.BytesIO()
  Image.fromarray(photo(64, 80)[..., 0]).save(buf, format="JPEG")
  assert jpeg.decode(buf.getvalue(), 3).shape == (64, 80, 3)


def test_jpeg_image_stands_in_for_an_array():
  data = encode(photo(60, 90))
  image = jpeg.JpegImage(data, 3, "demo: record 3")
  assert image.shape == (60, 90, 3)
  np.testing.assert_array_equal(np.asarray(image), jpeg.decode(data))
  np.testing.assert_array_equal(augment.center_crop(image, 32),
                                augment.center_crop(jpeg.decode(data), 32))
  np.testing.assert_array_equal(
      augment.random_resized_crop(image, np.random.default_rng(4), 32),
      augment.random_resized_crop(jpeg.decode(data), np.random.default_rng(4), 32))


def test_corrupt_bytes_name_the_record():
  broken = jpeg.JpegImage(encode(photo(60, 90))[:200], 3, "demo: record 7")
  with pytest.raises(DataError, match="demo: record 7 cannot be decoded"):
    augment.random_resized_crop(broken, np.random.default_rng(0), 32)
  with pytest.raises(DataError, match="record 7"):
    jpeg.JpegImage(b"not a jpeg", 3, "demo: record 7").shape


# ----------------------------------------------------------------- TFDS + grain


@pytest.fixture(scope="module")
def jpeg_tfds(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  root = str(tmp_path_factory.mktemp("jpeg_tfds"))
  return synthetic_jpeg_tfds(root), root


def test_tfds_source_hands_over_jpeg_bytes(jpeg_tfds):
  from mae_jax.data import sources
  bench, root = jpeg_tfds
  source = sources.TfdsSource(bench.DATASET, "train", os.path.join(root, "tfds"), False)
  record = source[0]
  assert isinstance(record["image"], jpeg.JpegImage)
  assert record["image"].shape in ((48, 64, 3), (64, 48, 3))


def test_grain_pipeline_same_batches_lazy_or_full_decode(jpeg_tfds, monkeypatch):
  """With crops too small for a reduced decode the lazy path is bit-identical."""
  from mae_jax.data import pipeline, sources
  bench, root = jpeg_tfds
  config = bench.grain_config(root)
  config["image_size"] = 32

  def batches(lazy):
    monkeypatch.setattr(sources.TfdsSource, "decode_jpeg_lazily", lazy)
    it = pipeline.train_iterator(config, global_batch=4, seed=1)
    return [next(it)["image"] for _ in range(2)]

  lazy, full = batches(True), batches(False)
  assert lazy[0].shape == (4, 32, 32, 3) and lazy[0].dtype == np.uint8
  for a, b in zip(lazy, full):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,channels", [((224, 224, 3), 3), ((28, 28, 1), 1),
                                            ((2, 8, 6, 3), 3), ((5, 7, 3), 1)])
def test_normalize_is_exactly_the_plain_formula(shape, channels):
  """The pipeline's normalise (row-wise for speed) is bit-identical to (x - m) / s."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, shape, dtype=np.uint8)
  mean, std = (0.485, 0.456, 0.406)[:channels], (0.229, 0.224, 0.225)[:channels]
  for view in (image, image[..., ::-1, :]):  # also a flipped (negative-stride) view
    want = ((view.astype(np.float32) - np.asarray(mean, np.float32) * 255.0)
            / (np.asarray(std, np.float32) * 255.0))
    got = augment.normalize(view, mean, std)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
