"""Reconstruction pictures that do not cheat: a norm-pix model's hidden patches get
the mean and variance estimated from the visible patches around them (checked
against a brute-force NumPy reference), so the picture does not change when a
hidden patch's pixels do; ``--patch_stats=true`` keeps the official view, which does."""
import itertools

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from mae_jax import viz

MEAN, STD = (0.5,), (0.25,)


def reference_neighbourhood_mean(values, visible, grid):
  """Loops: a hidden patch's value is the mean over the visible patches whose grid
  coordinates all differ from its own by at most r, for the smallest r that finds one."""
  b, length, k = values.shape
  coords = list(itertools.product(*[range(g) for g in grid]))
  out = np.array(values, np.float64)
  for i in range(b):
    seen = [j for j in range(length) if visible[i, j]]
    for j in range(length):
      if visible[i, j]:
        continue
      if not seen:
        out[i, j] = 0.0
        continue
      for r in range(1, max(grid) + 1):
        near = [n for n in seen
                if max(abs(a - c) for a, c in zip(coords[j], coords[n])) <= r]
        if near:
          out[i, j] = values[i, near].mean(0)
          break
  return out


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (2, 3, 4)])
def test_neighbourhood_mean_against_loops(grid):
  rng = np.random.default_rng(len(grid))
  length = int(np.prod(grid))
  values = rng.standard_normal((5, length, 2))
  visible = rng.random((5, length)) < 0.25
  visible[1] = False
  visible[1, -1] = True            # one visible patch: every hidden one grows to reach it
  visible[2] = False               # none visible: 0 everywhere
  visible[3] = rng.random(length) < 0.9
  got = viz.neighbourhood_mean(values, visible, grid)
  want = reference_neighbourhood_mean(values, visible, grid)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(got[visible], values[visible])


def reference_true_stats(images, pred, patch, per_channel):
  """The official visualisation: each patch's own mean and unbiased variance."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, -1, patch * patch, c).astype(np.float64)
  if per_channel:
    mean, std = x.mean(2, keepdims=True), x.std(2, ddof=1, keepdims=True)
    return (pred.reshape(x.shape) * (std + 1e-6) + mean).reshape(pred.shape)
  x = x.reshape(b, x.shape[1], -1)
  return pred * np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-6) + x.mean(-1, keepdims=True)


def example(channels=3, tubelet=0, seed=0):
  rng = np.random.default_rng(seed)
  shape = (2, 4, 16, 24, channels) if tubelet else (2, 16, 24, channels)
  images = (rng.standard_normal(shape) * rng.uniform(0.2, 2.0, shape[:1] + (1,) *
                                                     (len(shape) - 1))).astype(np.float32)
  length = (2 if tubelet else 1) * 4 * 6
  dim = (tubelet or 1) * 4 * 4 * channels
  pred = rng.standard_normal((2, length, dim)).astype(np.float32)
  mask = (rng.random((2, length)) < 0.6).astype(np.float32)
  mask[:, 0] = 1   # the patch the tests change is hidden
  mask[:, 1] = 0
  return images, pred, mask


@pytest.mark.parametrize("per_channel", [False, True])
def test_true_statistics_are_the_official_view(per_channel):
  images, pred, mask = example()
  got = viz.unnormalize_prediction(images, pred, 4, True, 0, per_channel, mask=mask,
                                   patch_stats="true")
  np.testing.assert_allclose(got, reference_true_stats(images, pred, 4, per_channel),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_default_statistics_come_from_the_visible_neighbours(per_channel):
  images, pred, mask = example()
  got = viz.unnormalize_prediction(images, pred, 4, True, 0, per_channel, mask=mask)
  # reference: per-patch statistics, then the loop estimate for the hidden patches
  b = len(images)
  x = images.reshape(b, 4, 4, 6, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 24, 16, 3)
  x = x.astype(np.float64) if per_channel else x.reshape(b, 24, 48, 1).astype(np.float64)
  mean = reference_neighbourhood_mean(x.mean(2), mask == 0, (4, 6))
  var = reference_neighbourhood_mean(x.var(2, ddof=1), mask == 0, (4, 6))
  k = mean.shape[-1]
  p = pred.reshape(b, 24, -1, k)
  want = (p * (np.sqrt(var) + 1e-6)[:, :, None] + mean[:, :, None] if per_channel else
          p * np.sqrt(var + 1e-6)[:, :, None] + mean[:, :, None])
  np.testing.assert_allclose(got, want.reshape(pred.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tubelet,per_channel", [(0, False), (0, True), (2, False)])
def test_default_picture_does_not_depend_on_the_hidden_patches(tubelet, per_channel):
  """Brighten and stretch the pixels of hidden patch 0: the reconstruction and the
  pasted columns stay the same by default, and change with the true statistics."""
  images, pred, mask = example(tubelet=tubelet)
  changed = images.copy()
  if tubelet:
    changed[:, :2, :4, :4] = changed[:, :2, :4, :4] * 3.0 + 1.5   # token 0: t<2, row 0, col 0
  else:
    changed[:, :4, :4] = changed[:, :4, :4] * 3.0 + 1.5

  def rows(x, stats):
    return viz.reconstruction_rows(x, pred, mask, 4, True, MEAN * 3, STD * 3, tubelet,
                                   per_channel, patch_stats=stats)
  k = 4
  before, after = rows(images, "visible"), rows(changed, "visible")
  if tubelet:   # [B * 4, T, ...]: rows 2 and 3 of each clip
    before, after = before.reshape(2, k, *before.shape[1:]), after.reshape(2, k, *after.shape[1:])
  np.testing.assert_array_equal(before[:, 2:], after[:, 2:])
  assert not np.array_equal(before[:, 0], after[:, 0])   # the original did change
  true_before, true_after = rows(images, "true"), rows(changed, "true")
  if tubelet:
    true_before = true_before.reshape(2, k, *true_before.shape[1:])
    true_after = true_after.reshape(2, k, *true_after.shape[1:])
  assert not np.array_equal(true_before[:, 2], true_after[:, 2])


def test_plain_pixel_models_are_untouched():
  images, pred, mask = example()
  for stats in viz.PATCH_STATS:
    np.testing.assert_array_equal(
        viz.unnormalize_prediction(images, pred, 4, False, mask=mask, patch_stats=stats), pred)
  assert viz.reconstruction_labels(False) == ["original", "masked", "reconstruction",
                                              "reconstruction + visible"]


def test_header_names_the_rule():
  assert "estimated from the visible patches" in viz.reconstruction_labels(True)[2]
  assert "uses the hidden patches' statistics" in viz.reconstruction_labels(True, "true")[2]
  rows = np.full((1, 4, 8, 8, 1), 0.25, np.float32)
  plain = viz.grid_image(rows, scale=2)
  titled = viz.grid_image(rows, scale=2, header=viz.reconstruction_labels(True))
  assert titled.shape[1] == plain.shape[1] and titled.shape[0] > plain.shape[0]
  np.testing.assert_array_equal(titled[-plain.shape[0]:], plain)
  header = titled[:-plain.shape[0]]
  assert (header < 128).any()    # text, in black


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def norm_pix_workdir(tmp_path_factory, fmnist_available):
  from conftest import load_config, tiny_overrides
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=1, batch=8)
  config.model.norm_pix_loss = True
  config.checkpoint.every_steps = 1
  workdir = str(tmp_path_factory.mktemp("norm_pix"))
  assert pretrain.train_and_evaluate(config, workdir)["step"] == 1
  return workdir


def tiles(png, num_rows, size=28, pad=2):
  """``[rows, 4, size, size]`` grey tiles of a visualize grid (below its header)."""
  scale = viz.default_scale(size)
  pixels = np.asarray(Image.open(png).convert("L"))
  top = pixels.shape[0] - (num_rows * (size + pad) + pad) * scale
  assert top > 0   # the header
  pixels = pixels[top::scale, ::scale]
  return np.stack([[pixels[pad + i * (size + pad):pad + i * (size + pad) + size,
                           pad + j * (size + pad):pad + j * (size + pad) + size]
                    for j in range(4)] for i in range(num_rows)])


@pytest.mark.slow
def test_visualize_patch_stats_option(norm_pix_workdir, tmp_path):
  """A picture whose hidden patches are changed gives the same reconstruction by
  default and another with --patch_stats=true; the log names the rule."""
  rng = np.random.default_rng(0)
  photo = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4), np.uint8)).resize(
      (28, 28), Image.BICUBIC))
  Image.fromarray(photo).save(tmp_path / "a.png")

  def grid(name, *flags):
    out = tmp_path / f"{name}.png"
    proc = run_cli("visualize", f"--workdir={norm_pix_workdir}", f"--out={out}",
                   f"--images={tmp_path / name}.src.png", "--seed=1", *flags, check=True)
    return tiles(out, 1)[0], proc.stdout + proc.stderr

  Image.fromarray(photo).save(tmp_path / "orig.src.png")
  first, log = grid("orig")
  assert "estimated from the visible patches" in log
  hidden = np.all(first[1].reshape(4, 7, 4, 7).transpose(0, 2, 1, 3) == 128, axis=(2, 3))
  assert hidden.sum() == 12
  row, col = np.argwhere(hidden)[0]
  edited = photo.astype(int)
  edited[row * 7:row * 7 + 7, col * 7:col * 7 + 7] = 255 - edited[row * 7:row * 7 + 7,
                                                                   col * 7:col * 7 + 7] // 3
  Image.fromarray(edited.astype(np.uint8)).save(tmp_path / "edit.src.png")
  second, _ = grid("edit")
  assert not np.array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[2:], second[2:])
  true_first, log = grid("orig", "--patch_stats=true")
  true_second, _ = grid("edit", "--patch_stats=true")
  assert "uses the hidden patches' statistics" in log
  assert not np.array_equal(true_first[2], true_second[2])
  np.testing.assert_array_equal(true_first[0], first[0])
  proc = run_cli("visualize", f"--workdir={norm_pix_workdir}", f"--out={tmp_path / 'x.png'}",
                 "--patch_stats=hidden")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "patch_stats" in proc.stderr and "visible" in proc.stderr, proc.stderr
