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
  assert clip["video"].shape == (8, 64, 64, 1) and clip["video"].dtype == np.uint8
  assert clip["label"] == 5
  item = data.images[5]["image"][..., 0]
  for frame in clip["video"][..., 0]:
    ys, xs = np.nonzero(frame)
    window = frame[ys.min():ys.min() + 28, xs.min():xs.min() + 28]
    np.testing.assert_array_equal(window, item)  # the item, whole, every frame
  np.testing.assert_array_equal(data[5]["video"], clip["video"])
  other_seed = moving_fmnist.MovingFashionMnist(items(), seed=4, num_frames=8)
  assert not np.array_equal(other_seed[5]["video"], clip["video"])
  assert not np.array_equal(clip["video"][0], clip["video"][-1])  # it moves


def test_two_items_combine_by_maximum():
  data = moving_fmnist.MovingFashionMnist(items(), seed=1, num_frames=4, num_items=2)
  clip = data[2]["video"][..., 0].astype(int)
  single = moving_fmnist.MovingFashionMnist(items(), seed=1, num_frames=4)
  assert clip.sum() >= single[2]["video"].astype(int).sum()
  assert data[2]["label"] == 2


def test_canvas_statistics_match_the_clips():
  data = moving_fmnist.MovingFashionMnist(items(200), seed=0, num_frames=4)
  pixels = np.stack([data[i]["video"] for i in range(200)]).astype(float) / 255
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
