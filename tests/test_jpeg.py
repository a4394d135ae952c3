"""Lazy JPEG decoding: same boxes and pixels as decoding first, reduced decodes only
where the crop allows, the ``fast`` backend (simplejpeg + torch) against PIL, and the
TFDS source + grain pipeline using them."""
import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_jpeg_tfds
from mae_jax.data import augment, jpeg
from mae_jax.errors import ConfigError, DataError


def photo(height, width, seed=0):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
  return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def encode(image, quality=90, **options):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality, **options)
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


def test_pil_backend_is_torchvision_resized_crop():
  """The official loader's pixels: torchvision's resized_crop of the PIL image."""
  tvf = pytest.importorskip("torchvision.transforms.functional")
  from torchvision.transforms import InterpolationMode
  data = encode(photo(375, 500, seed=3))
  pil = Image.open(io.BytesIO(data)).convert("RGB")
  for seed in range(4):
    box = augment.rrc_box(np.random.default_rng(seed), 375, 500)
    want = np.asarray(tvf.resized_crop(pil, *box, [224, 224], InterpolationMode.BICUBIC))
    np.testing.assert_array_equal(jpeg.random_resized_crop(data, np.random.default_rng(seed), 224),
                                  want)


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


# ----------------------------------------------------------------- fast backend


def needs_fast_backend():
  pytest.importorskip("simplejpeg")
  pytest.importorskip("torch")


def cmyk_jpeg(image):
  buf = io.BytesIO()
  Image.fromarray(image).convert("CMYK").save(buf, format="JPEG", quality=90)
  return buf.getvalue()


@pytest.mark.parametrize("kind", ["420", "444", "progressive", "grey", "odd_size"])
def test_turbo_decode_gives_pils_pixels(kind):
  needs_fast_backend()
  image = photo(375, 500, seed=4)
  data = {"420": lambda: encode(image),
          "444": lambda: encode(image, subsampling=0),
          "progressive": lambda: encode(image, progressive=True),
          "grey": lambda: encode(image[..., 0]),
          "odd_size": lambda: encode(image[:373, :497])}[kind]()
  for channels, mode in ((3, "RGB"), (1, "L")):
    pil = Image.open(io.BytesIO(data))
    pil.draft("L" if mode == "L" else pil.mode, None)  # "L": the luminance, as jpeg.py
    want = np.asarray(pil.convert(mode)).reshape(pil.size[1], pil.size[0], channels)
    np.testing.assert_array_equal(jpeg.turbo_decode(data, channels), want)


def test_fast_backend_is_close_to_pil_and_deterministic():
  """Full-size decodes: PIL's pixels resized by torch's kernel, within 2 grey levels
  of PIL's resize (mean < 0.1; measured 0.016 on these photos); reduced decodes:
  PIL's pixels exactly. Same RNG draws, same output for the same seed."""
  needs_fast_backend()
  for shape, scale, reduced in (((375, 500), (0.2, 1.0), False),
                                ((500, 375), (0.08, 1.0), False),
                                ((1200, 1600), (0.6, 1.0), True)):  # crops >= 448
    data = encode(photo(*shape, seed=5))
    diffs = []
    for seed in range(6):
      rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
      want = jpeg.random_resized_crop(data, rng_a, 224, scale)
      got = jpeg.random_resized_crop(data, rng_b, 224, scale, backend="fast")
      assert got.shape == (224, 224, 3) and got.dtype == np.uint8
      np.testing.assert_array_equal(
          got, jpeg.random_resized_crop(data, np.random.default_rng(seed), 224, scale,
                                        backend="fast"))
      assert rng_a.random() == rng_b.random()
      diffs.append(np.abs(got.astype(np.int16) - want))
    diffs = np.stack(diffs)
    if reduced:  # the same reduced decode and PIL resize: identical pixels
      assert diffs.max() == 0
    else:
      assert 0 < diffs.max() <= 2 and diffs.mean() < 0.1, (diffs.max(), diffs.mean())


@pytest.mark.parametrize("backend", ["pil", "fast"])
def test_flip_is_drawn_after_the_box_and_mirrors_the_crop(backend):
  """The flip (done by PIL or torch, not NumPy) is [:, ::-1] of the crop, with the
  coin drawn after the box as in torchvision, for encoded and decoded images."""
  if backend == "fast":
    needs_fast_backend()
  data = encode(photo(375, 500, seed=7))
  flips = 0
  for seed in range(8):
    for image in (jpeg.JpegImage(data), jpeg.decode(data)):
      rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
      plain = augment.random_resized_crop(image, rng_a, 64, backend=backend)
      coin = rng_a.random() < 0.5
      got = augment.random_resized_crop(image, rng_b, 64, backend=backend, hflip=True)
      np.testing.assert_array_equal(got, plain[:, ::-1] if coin else plain)
      assert got.flags.c_contiguous and rng_a.random() == rng_b.random()
    flips += coin
  assert 0 < flips < 8


def test_fast_backend_grey_output_cmyk_and_arrays():
  needs_fast_backend()
  image = photo(120, 160, seed=6)
  for data in (encode(image), cmyk_jpeg(image)):
    for channels in (1, 3):
      want = jpeg.random_resized_crop(data, np.random.default_rng(1), 64, channels=channels)
      got = jpeg.random_resized_crop(data, np.random.default_rng(1), 64, channels=channels,
                                     backend="fast")
      assert got.shape == (64, 64, channels) and got.dtype == np.uint8
      assert np.abs(got.astype(np.int16) - want).max() <= 2
  for array in (image, image[..., :1]):  # decoded images take the same resize
    want = augment.random_resized_crop(array, np.random.default_rng(2), 64)
    got = augment.random_resized_crop(array, np.random.default_rng(2), 64, backend="fast")
    assert got.shape == want.shape and np.abs(got.astype(np.int16) - want).max() <= 2


def test_fast_backend_corrupt_data_and_config_errors(monkeypatch):
  needs_fast_backend()
  truncated = jpeg.JpegImage(encode(photo(60, 90))[:200], 3, "demo: record 7")
  with pytest.raises(DataError, match="demo: record 7 cannot be decoded"):
    augment.random_resized_crop(truncated, np.random.default_rng(0), 32, backend="fast")
  with pytest.raises(DataError, match="record 8 cannot be decoded .not a recognised image"):
    augment.random_resized_crop(jpeg.JpegImage(b"not a jpeg", 3, "demo: record 8"),
                                np.random.default_rng(0), 32, backend="fast")
  with pytest.raises(ConfigError, match="rrc_backend='turbo' is unknown; choose pil or fast"):
    augment.rrc_backend("turbo")
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "simplejpeg" else real_find_spec(name, *a))
  with pytest.raises(ConfigError, match=r"needs simplejpeg: pip install 'mae_jax\[fast\]'"):
    augment.rrc_backend("fast")


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


def test_grain_pipeline_fast_backend_deterministic_resumable_and_close(jpeg_tfds):
  """rrc_backend=fast: the same (seed, index) -> the same pixels, exact resumption,
  and the pil backend's batches within 2 grey levels (same boxes, same flips)."""
  needs_fast_backend()
  from mae_jax.data import pipeline
  bench, root = jpeg_tfds

  def iterator(backend):
    config = bench.grain_config(root, rrc_backend=backend)
    config["image_size"] = 32
    return pipeline.train_iterator(config, global_batch=4, seed=3)

  it = iterator("fast")
  first = next(it)["image"]
  state = it.get_state()
  second = next(it)["image"]
  assert first.shape == (4, 32, 32, 3) and first.dtype == np.uint8
  again = iterator("fast")
  np.testing.assert_array_equal(next(again)["image"], first)
  resumed = iterator("fast")
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["image"], second)
  pil = iterator("pil")
  for got in (first, second):
    assert np.abs(got.astype(np.int16) - next(pil)["image"]).max() <= 2


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
