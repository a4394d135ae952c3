"""Moving Fashion-MNIST clips: motion, content, labels and determinism."""
import numpy as np
import pytest

from mae_jax.data import moving_fmnist, sources
from mae_jax.errors import ConfigError


def step_by_step(start, velocity, num_frames, span):
  """Reference: move a point frame by frame, reflecting at the walls."""
  pos, vel, out = np.array(start, float), np.array(velocity, float), []
  for _ in range(num_frames):
    out.append(np.rint(pos).astype(int))
    pos = pos + vel
    for axis in range(2):
      while pos[axis] < 0 or pos[axis] > span:
        if pos[axis] < 0:
          pos[axis], vel[axis] = -pos[axis], -vel[axis]
        else:
          pos[axis], vel[axis] = 2 * span - pos[axis], -vel[axis]
  return np.stack(out)


@pytest.mark.parametrize("seed", range(5))
def test_bounce_matches_frame_by_frame_reflection(seed):
  rng = np.random.default_rng(seed)
  span = 36
  start = rng.uniform(0, span, 2)
  velocity = rng.uniform(-9, 9, 2)
  got = moving_fmnist.bounce(start, velocity, 40, span)
  np.testing.assert_array_equal(got, step_by_step(start, velocity, 40, span))
  assert got.min() >= 0 and got.max() <= span


def items(n=12, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)
  return sources.ArraySource(images, np.arange(n) % 10, 10, (0.3,), (0.35,), name="toy")


def test_clip_content_label_and_determinism():
  data = moving_fmnist.MovingFashionMnist(items(), seed=3, num_frames=8, canvas=64)
  clip = data[5]
  assert clip["image"].shape == (8, 64, 64, 1) and clip["image"].dtype == np.uint8
  assert clip["label"] == 5
  item = data.images[5]["image"][..., 0]
  for frame in clip["image"][..., 0]:
    ys, xs = np.nonzero(frame)
    window = frame[ys.min():ys.min() + 28, xs.min():xs.min() + 28]
    np.testing.assert_array_equal(window, item)  # the item, whole, every frame
  np.testing.assert_array_equal(data[5]["image"], clip["image"])
  other_seed = moving_fmnist.MovingFashionMnist(items(), seed=4, num_frames=8)
  assert not np.array_equal(other_seed[5]["image"], clip["image"])
  assert not np.array_equal(clip["image"][0], clip["image"][-1])  # it moves


def test_two_items_combine_by_maximum():
  data = moving_fmnist.MovingFashionMnist(items(), seed=1, num_frames=4, num_items=2)
  clip = data[2]["image"][..., 0].astype(int)
  single = moving_fmnist.MovingFashionMnist(items(), seed=1, num_frames=4)
  assert clip.sum() >= single[2]["image"].astype(int).sum()
  assert data[2]["label"] == 2


def test_canvas_statistics_match_the_clips():
  data = moving_fmnist.MovingFashionMnist(items(200), seed=0, num_frames=4)
  pixels = np.stack([data[i]["image"] for i in range(200)]).astype(float) / 255
  pixels_items = np.stack([data.images[i]["image"] for i in range(200)]) / 255
  data.images.mean, data.images.std = (pixels_items.mean(),), (pixels_items.std(),)
  mean, std = data._stats()
  assert abs(mean[0] - pixels.mean()) < 1e-3
  assert abs(std[0] - pixels.std()) / pixels.std() < 0.02


def test_bad_settings_say_what_to_change():
  with pytest.raises(ConfigError, match="canvas"):
    moving_fmnist.MovingFashionMnist(items(), canvas=20)
  with pytest.raises(ConfigError, match="num_items"):
    moving_fmnist.MovingFashionMnist(items(), num_items=3)


def test_interleaved_sinusoid_equals_the_transformers_table():
  from transformers.models.videomae import modeling_videomae
  from mae_jax.models import pos_embed
  ref = modeling_videomae.get_sinusoid_encoding_table(37, 48)[0].numpy()
  np.testing.assert_allclose(pos_embed.interleaved_sinusoid(37, 48), ref, atol=1e-6)


def test_sincos_3d_layout():
  from mae_jax.models import pos_embed
  dim, (gt, gh, gw) = 64, (3, 2, 4)
  table = pos_embed.sincos_3d(dim, (gt, gh, gw)).reshape(gt, gh, gw, dim)
  spatial = pos_embed.sincos_2d(48, (gh, gw)).reshape(gh, gw, 48)
  for t in range(gt):
    np.testing.assert_allclose(table[t, ..., 16:], spatial)  # space: same on every frame
    omega = 1 / 10000 ** (np.arange(8) / 8)  # time: 1-D sin-cos of t on 16 channels
    expected = np.concatenate([np.sin(t * omega), np.cos(t * omega)])
    np.testing.assert_allclose(table[t, :, :, :16], np.broadcast_to(expected, (gh, gw, 16)),
                               atol=1e-6)
  with pytest.raises(ValueError, match="16"):
    pos_embed.sincos_3d(40, (1, 1, 1))


def reference_patchify_clips(clips, p, t):
  b, frames, h, w, c = clips.shape
  out = []
  for i in range(frames // t):
    for r in range(h // p):
      for col in range(w // p):
        out.append(clips[:, i * t:(i + 1) * t, r * p:(r + 1) * p, col * p:(col + 1) * p]
                   .reshape(b, -1))  # (frame, row, col, channel) inside the patch
  return np.stack(out, axis=1)


def test_spacetime_patchify_against_loops_and_inverse():
  from mae_jax.models import masking
  clips = np.random.default_rng(0).normal(size=(2, 4, 8, 12, 3)).astype(np.float32)
  got = np.asarray(masking.patchify_clips(clips, 4, 2))
  np.testing.assert_array_equal(got, reference_patchify_clips(clips, 4, 2))
  back = masking.unpatchify_clips(got, 4, 2, (2, 2, 3), 3)
  np.testing.assert_array_equal(np.asarray(back), clips)
  images = clips[:, 0]
  np.testing.assert_array_equal(np.asarray(masking.patchify_clips(images[:, None], 4, 1)),
                                np.asarray(masking.patchify(images, 4)))
  with pytest.raises(ConfigError, match="tubelet_size"):
    masking.patchify_clips(clips[:, :3], 4, 2)


def test_tube_masking_masks_whole_tubes():
  import jax
  from mae_jax.models import masking
  grid, ratio = (4, 3, 5), 0.6
  keep = masking.tube_visible(grid, ratio)
  assert keep == 4 * (15 - int(0.6 * 15))
  noise = masking.tube_noise(jax.random.key(0), 3, grid)
  x = np.zeros((3, 60, 2), np.float32)
  _, mask, _ = masking.random_masking(x, 1 - keep / 60, noise=noise)
  mask = np.asarray(mask).reshape(3, 4, 15)
  assert (mask == mask[:, :1]).all()  # the same spatial mask on every time step
  assert (mask.sum(axis=(1, 2)) == 60 - keep).all()
  assert not (mask[0] == mask[1]).all()  # per-sample
