"""Fine-tuning augmentations against timm's definitions: mixup/cutmix, label
smoothing, RandAugment, random erasing, and the deterministic pipelines."""
import numpy as np
import pytest

from mae_jax.data import finetune_augment as fa
from mae_jax.errors import ConfigError


def _batch(n=8, h=12, w=10, c=1, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, h, w, c)).astype(np.float32),
          rng.integers(0, 10, size=n).astype(np.int32))


def test_label_smoothing_values():
  y = fa.smooth_one_hot(np.array([3, 0]), num_classes=10, smoothing=0.1)
  assert y[0, 3] == pytest.approx(1 - 0.1 + 0.1 / 10)   # on value
  assert y[0, 0] == pytest.approx(0.1 / 10)             # off value
  np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(fa.smooth_one_hot(np.array([1]), 4, 0.0), [[0, 1, 0, 0]])


def test_mixup_and_cutmix_conserve_label_mass_and_mix_as_timm():
  images, labels = _batch()
  seen = set()
  for seed in range(40):
    rng = np.random.default_rng(seed)
    out, targets, info = fa.mixup_cutmix(images, labels, rng, num_classes=10)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
    assert 0.0 <= info.lam <= 1.0
    y = fa.smooth_one_hot(labels, 10, 0.1)
    np.testing.assert_allclose(targets, info.lam * y + (1 - info.lam) * y[::-1], atol=1e-6)
    if info.cutmix:
      y0, y1, x0, x1 = info.box
      assert 0 <= y0 <= y1 <= images.shape[1] and 0 <= x0 <= x1 <= images.shape[2]
      # lam is the area-corrected share of the image's own pixels
      assert info.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (12 * 10))
      np.testing.assert_array_equal(out[:, y0:y1, x0:x1], images[::-1, y0:y1, x0:x1])
      inside = np.zeros(images.shape[1:3], bool)
      inside[y0:y1, x0:x1] = True
      np.testing.assert_array_equal(out[:, ~inside], images[:, ~inside])
    else:
      np.testing.assert_allclose(out, info.lam * images + (1 - info.lam) * images[::-1],
                                 atol=1e-6)
    seen.add(info.cutmix)
  assert seen == {True, False}


def test_cutmix_boxes_stay_inside_for_any_lambda():
  rng = np.random.default_rng(1)
  for lam in np.linspace(0.0, 1.0, 51):
    (y0, y1, x0, x1), corrected = fa.cutmix_box(rng, 7, 9, float(lam))
    assert 0 <= y0 <= y1 <= 7 and 0 <= x0 <= x1 <= 9
    assert 0.0 <= corrected <= 1.0


def test_switch_probability_is_half():
  images, labels = _batch(n=2, h=4, w=4)
  rng = np.random.default_rng(1234)
  n = 2000
  cut = sum(fa.mixup_cutmix(images, labels, rng, num_classes=10)[2].cutmix for _ in range(n))
  # binomial(2000, 0.5): std 0.011; 5 std either side
  assert abs(cut / n - 0.5) < 0.056, cut / n
  rng = np.random.default_rng(7)
  cut = sum(fa.mixup_cutmix(images, labels, rng, num_classes=10, switch_prob=0.2)[2].cutmix
            for _ in range(n))
  assert abs(cut / n - 0.2) < 0.045, cut / n


def test_mixing_off_leaves_images_and_smooths_labels():
  images, labels = _batch()
  out, targets, info = fa.mixup_cutmix(images, labels, np.random.default_rng(0),
                                       num_classes=10, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert info.lam == 1.0 and out is images
  np.testing.assert_allclose(targets, fa.smooth_one_hot(labels, 10, 0.1))
  with pytest.raises(ConfigError, match="even"):
    fa.mixup_cutmix(images[:3], labels[:3], np.random.default_rng(0), num_classes=10)


def test_rand_augment_spec_and_every_op():
  spec = fa.parse_rand_augment("rand-m9-mstd0.5-inc1")
  assert spec == fa.RandAugmentSpec(num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.5)
  assert fa.parse_rand_augment("") is None
  with pytest.raises(ConfigError, match="unknown key"):
    fa.parse_rand_augment("rand-m9-zz1")
  assert len(fa.RAND_OPS) == 15
  rng = np.random.default_rng(0)
  for channels in (1, 3):
    image = rng.integers(0, 256, size=(16, 16, channels), dtype=np.uint8)
    for name, op in fa.RAND_OPS.items():
      for level in (0.0, 9.0, 10.0):
        from PIL import Image
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        out = np.asarray(op(pil, level, 128 if channels == 1 else (128,) * 3, rng))
        assert out.shape[:2] == (16, 16) and out.dtype == np.uint8, name
    out = fa.rand_augment(image, rng, spec, (124,) * 3)
    assert out.shape == image.shape and out.dtype == np.uint8
  # the ops do change images, and strength grows with the magnitude
  gray = np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 1))
  diffs = []
  for m in (1, 9):
    s = fa.RandAugmentSpec(num_ops=2, magnitude=m, magnitude_std=0.0, prob=1.0)
    r = np.random.default_rng(3)
    diffs.append(np.mean([np.abs(fa.rand_augment(gray, r, s, (0,)).astype(float) - gray).mean()
                          for _ in range(200)]))
  assert diffs[1] > diffs[0] > 0


def test_random_erasing_pixel_mode():
  image = np.zeros((20, 20, 3), np.float32)
  rng = np.random.default_rng(0)
  erased = 0
  for _ in range(1000):
    out = fa.random_erasing(image, rng, prob=0.25, mode="pixel")
    changed = np.any(out != 0, axis=-1)
    if changed.any():
      erased += 1
      rows, cols = np.nonzero(changed)
      h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
      assert 0.02 * 400 * 0.5 <= h * w <= 400 / 3 * 1.5 and h < 20 and w < 20
  assert abs(erased / 1000 - 0.25) < 0.05
  noisy = fa.random_erasing(np.zeros((64, 64, 1), np.float32), np.random.default_rng(5),
                            prob=1.0)
  values = noisy[noisy != 0]
  assert values.size > 50 and abs(values.std() - 1.0) < 0.2   # N(0, 1) per pixel


def test_finetune_pipeline_is_deterministic(fmnist_available):
  from conftest import load_config
  config = load_config("finetune_fmnist")
  from mae_jax.data import pipeline
  it = lambda seed: pipeline.train_iterator(config.data, global_batch=8, seed=seed,
                                            transform=fa.train_transform)
  a, b, c = next(it(3)), next(it(3)), next(it(4))
  assert a["image"].shape == (8, 28, 28, 1) and a["image"].dtype == np.uint8
  assert a["erase"].shape == (8, 4) and a["erase"].dtype == np.int32
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["erase"], b["erase"])
  assert not np.array_equal(a["image"], c["image"])
  n, batches = pipeline.eval_batches(config.data, "test", global_batch=64, max_examples=100)
  got = list(batches())
  assert n == 2 and len(got) == 2
  assert got[1]["valid"].sum() == 36 and not got[1]["valid"][36:].any()


@pytest.mark.parametrize("seed", range(6))
def test_on_device_mixing_equals_the_numpy_reference(seed):
  """The trainer mixes the global batch inside the jitted step from the host's draws;
  it must equal the NumPy ``mixup_cutmix`` (timm's Mixup) for the same draws."""
  import jax
  from mae_jax.train import classifier
  data = np.random.default_rng(100 + seed)
  images = data.normal(size=(6, 12, 10, 3)).astype(np.float32)
  labels = data.integers(0, 7, 6)
  kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, switch_prob=0.5)
  want_images, want_targets, info = fa.mixup_cutmix(
      images, labels, np.random.default_rng(seed), num_classes=7, smoothing=0.1, **kw)
  draw = fa.draw_mix(np.random.default_rng(seed), 12, 10, **kw)
  assert draw == info
  mix = jax.jit(lambda x, y, m: classifier.mix_batch(x, y, m, num_classes=7,
                                                     smoothing=0.1))
  got_images, got_targets = mix(images, labels, draw.as_vector())
  np.testing.assert_allclose(got_images, want_images, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_targets, want_targets, rtol=1e-6, atol=1e-7)


def test_on_device_mixing_covers_mixup_cutmix_and_none():
  kinds = set()
  for seed in range(40):
    info = fa.draw_mix(np.random.default_rng(seed), 12, 10, prob=0.7)
    kinds.add("none" if info.lam == 1.0 else "cutmix" if info.box else "mixup")
  assert kinds == {"none", "cutmix", "mixup"}


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_on_device_erasing_equals_the_numpy_reference_outside_the_noise(mode):
  """The step erases the boxes the host drew (``erase_params``): the same boxes as
  ``random_erasing`` with the same generator, pixels outside untouched, the fill
  N(0, 1) (per pixel, per channel) or 0."""
  import jax
  from mae_jax.train import classifier
  data = np.random.default_rng(7)
  images = data.normal(size=(64, 24, 20, 3)).astype(np.float32) + 5.0  # far from N(0, 1)
  boxes, want = [], []
  for i in range(64):
    boxes.append(fa.erase_params(np.random.default_rng(i), 24, 20, prob=0.5))
    want.append(fa.random_erasing(images[i], np.random.default_rng(i), prob=0.5, mode=mode))
  boxes, want = np.stack(boxes), np.stack(want)
  got = np.asarray(jax.jit(lambda x, b: classifier.erase_batch(
      x, b, jax.random.key(0), mode))(images, boxes))
  host_erased, device_erased = want != images, got != images
  np.testing.assert_array_equal(device_erased, host_erased)
  assert 10 < (boxes[:, 2] > 0).sum() < 54            # about half the images erased
  np.testing.assert_array_equal(got[~device_erased], images[~device_erased])
  fill = got[device_erased]
  if mode == "const":
    assert np.all(fill == 0)
  else:
    assert abs(fill.mean()) < 0.2 and abs(fill.std() - 1.0) < 0.2
  if mode == "rand":   # one value per image and channel
    i = int(np.argmax(boxes[:, 2] > 0))
    top, left, h, w = boxes[i]
    np.testing.assert_array_equal(got[i, top:top + h, left:left + w],
                                  np.broadcast_to(got[i, top, left], (h, w, 3)))


def test_rand_augment_resamples_bicubically_as_timm_with_bicubic_interpolation(monkeypatch):
  """The official fine-tuning builds timm's transform with interpolation='bicubic':
  every geometric op then resamples bicubically. Each of ours equals timm's op
  (same magnitude, same sign, same fill) pixel for pixel."""
  import random
  timm_data = pytest.importorskip("timm.data")
  from PIL import Image
  from timm.data.auto_augment import RandAugment
  mean = (0.485, 0.456, 0.406)
  transform = timm_data.create_transform(
      32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
      mean=mean, std=(0.229, 0.224, 0.225))
  rand_aug = next(t for t in transform.transforms if isinstance(t, RandAugment))
  timm_ops = {op.name: op for op in rand_aug.ops}
  assert set(timm_ops) == set(fa.RAND_OPS)
  geometric = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
  for name in geometric:
    assert timm_ops[name].kwargs["resample"] == Image.BICUBIC, name
  fill = tuple(int(round(m * 255)) for m in mean)
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), np.uint8))

  def timm_op(name, level, negate):
    with monkeypatch.context() as m:  # timm negates when random.random() > 0.5
      m.setattr(random, "random", lambda: 1.0 if negate else 0.0)
      op = timm_ops[name]
      args = op.level_fn(level, op.hparams)
    assert op.kwargs["fillcolor"] == fill
    return np.asarray(op.aug_fn(image, *args, **op.kwargs))

  for name in geometric:
    for level in (3.0, 9.0):
      both = [timm_op(name, level, negate) for negate in (False, True)]
      for seed in range(6):  # ours draws only the sign: it must be one of timm's two
        got = np.asarray(fa.RAND_OPS[name](image, level, fill, np.random.default_rng(seed)))
        assert any(np.array_equal(got, want) for want in both), (name, level, seed)
