"""Moving Fashion-MNIST: the embedded, offline video dataset.

Clip ``i`` of a split is a pure function of ``(seed, i)``: item ``i`` of the
Fashion-MNIST split (and, with ``num_items=2``, a second item drawn from the same
split) moves in a straight line on a black ``canvas x canvas`` square and bounces
off its edges, for ``num_frames`` frames; overlapping items combine by maximum, as
in Moving MNIST (Srivastava et al., 2015). The label is the class of item ``i``.

Motion: the start is uniform over the canvas, the direction uniform on the
circle, the speed uniform in ``speed`` pixels per frame; a coordinate that leaves
``[0, canvas - 28]`` is reflected back (a triangle wave of the unfolded line), and
positions are rounded to whole pixels.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mae_jax.errors import ConfigError


def bounce(start: np.ndarray, velocity: np.ndarray, num_frames: int,
           span: int) -> np.ndarray:
  """Integer positions ``[num_frames, 2]`` of a point reflected inside ``[0, span]``."""
  if span == 0:
    return np.zeros((num_frames, 2), np.int64)
  unfolded = start[None] + np.arange(num_frames)[:, None] * velocity[None]
  folded = np.mod(unfolded, 2 * span)
  folded = np.where(folded > span, 2 * span - folded, folded)
  return np.rint(folded).astype(np.int64)


@dataclasses.dataclass
class MovingFashionMnist:
  """Clips ``{"image": uint8 [T, S, S, 1], "label": int}`` over an image source
  (the pipeline treats a 4-D ``image`` as a clip).

  ``images`` is any source with ``[i] -> {"image", "label"}`` of 28x28 grey
  images (the Fashion-MNIST IDX or TFDS source).
  """
  images: object
  seed: int = 0
  num_frames: int = 16
  canvas: int = 64
  num_items: int = 1
  speed: tuple[float, float] = (1.5, 3.5)

  def __post_init__(self):
    item = np.asarray(self.images[0]["image"])
    self.item_size = item.shape[0]
    if self.num_frames < 1 or self.num_items not in (1, 2):
      raise ConfigError(f"moving Fashion-MNIST needs num_frames >= 1 and num_items 1 or 2, "
                        f"got {self.num_frames} and {self.num_items}.")
    if self.canvas < self.item_size:
      raise ConfigError(f"data.video.canvas={self.canvas} is smaller than the "
                        f"{self.item_size}-pixel items; use at least {self.item_size}.")
    self.name = f"moving_{getattr(self.images, 'name', 'fashion_mnist')}"
    self.num_classes = self.images.num_classes
    self.channels = 1
    self.mean, self.std = self._stats()

  def _stats(self) -> tuple[tuple[float], tuple[float]]:
    """Pixel mean/std of the canvas, from the item statistics and the area ratio."""
    area = self.num_items * (self.item_size / self.canvas) ** 2
    mean, std = self.images.mean[0], self.images.std[0]
    second_moment = area * (std ** 2 + mean ** 2)
    canvas_mean = area * mean
    return (canvas_mean,), ((second_moment - canvas_mean ** 2) ** 0.5,)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    rng = np.random.default_rng([self.seed, index])
    items = [index]
    if self.num_items == 2:
      items.append(int(rng.integers(len(self.images))))
    span = self.canvas - self.item_size
    clip = np.zeros((self.num_frames, self.canvas, self.canvas), np.uint8)
    for item in items:
      image = np.asarray(self.images[item]["image"]).reshape(self.item_size, self.item_size)
      start = rng.uniform(0, span, size=2)
      angle = rng.uniform(0, 2 * np.pi)
      velocity = rng.uniform(*self.speed) * np.array([np.sin(angle), np.cos(angle)])
      for frame, (y, x) in enumerate(bounce(start, velocity, self.num_frames, span)):
        window = clip[frame, y:y + self.item_size, x:x + self.item_size]
        np.maximum(window, image, out=window)
    return {"image": clip[..., None], "label": int(self.images[index]["label"])}
