"""Per-image augmentations in NumPy/PIL, driven by a ``np.random.Generator``.

RandomResizedCrop draws its box with one of two samplers (``data.augment.rrc_sampler``)
and resizes with bicubic interpolation, as the official MAE code does:

* ``torchvision`` (pretraining, fine-tuning): 10 tries at a random area in ``scale``
  and log-uniform aspect ratio in ``ratio``, then a centre-crop fallback;
* ``clamped`` (the linear probe): the official ``util/crop.RandomResizedCrop``, one
  draw of area and aspect with both sides clamped to the image, no retry loop.

Transforms return uint8 images; normalisation happens on the device
(``mae_jax.train.step.to_model_input``), so batches travel as uint8.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mae_jax.errors import ConfigError


def rrc_box(rng: np.random.Generator, height: int, width: int,
            scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """Crop box ``(top, left, h, w)`` as ``torchvision.transforms.RandomResizedCrop``."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def clamped_rrc_box(rng: np.random.Generator, height: int, width: int,
                    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """Crop box ``(top, left, h, w)`` as the official MAE ``util/crop.RandomResizedCrop``
  (the linear probe's crop, after BYOL's TF code): one draw of area and aspect
  ratio, each side clamped to the image, no retry and no fallback. Sides are at
  least 1 pixel (the official code would fail on a 0-pixel side)."""
  area = height * width
  target_area = area * rng.uniform(scale[0], scale[1])
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  w = max(1, min(int(round(math.sqrt(target_area * aspect))), width))
  h = max(1, min(int(round(math.sqrt(target_area / aspect))), height))
  top = int(rng.integers(0, height - h + 1))
  left = int(rng.integers(0, width - w + 1))
  return top, left, h, w


RRC_SAMPLERS = {"torchvision": rrc_box, "clamped": clamped_rrc_box}


def rrc_sampler(name: str):
  """The box function named by ``data.augment.rrc_sampler``."""
  if name not in RRC_SAMPLERS:
    raise ConfigError(f"data.augment.rrc_sampler={name!r} is unknown; choose "
                      f"{' or '.join(RRC_SAMPLERS)}.")
  return RRC_SAMPLERS[name]


def _to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
  out = np.asarray(pil)
  return out[..., None] if out.ndim == 2 else out[..., :channels]


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                        sampler: str = "torchvision") -> np.ndarray:
  """One crop box per image; a clip ``[T, H, W, C]`` gets the same box on every frame."""
  if hasattr(image, "random_resized_crop"):  # still encoded: mae_jax.data.jpeg.JpegImage
    return image.random_resized_crop(rng, size, scale, ratio, sampler)
  top, left, h, w = rrc_sampler(sampler)(rng, image.shape[-3], image.shape[-2], scale, ratio)
  frames = image if image.ndim == 4 else image[None]
  if (top, left, h, w) == (0, 0, size, size) == (0, 0) + frames.shape[1:3]:
    return image  # the whole image at its own size: nothing to resample
  out = np.stack([_from_pil(_to_pil(frame).resize((size, size), Image.BICUBIC,
                                                  box=(left, top, left + w, top + h)),
                            image.shape[-1]) for frame in frames])
  return out if image.ndim == 4 else out[0]


def center_crop(image: np.ndarray, size: int, crop_pct: float = 0.875) -> np.ndarray:
  """Eval transform: identity at the right size, else resize shorter side + centre crop
  (every frame of a clip alike)."""
  image = np.asarray(image)  # decodes an encoded image
  if image.ndim == 4:
    return np.stack([center_crop(frame, size, crop_pct) for frame in image])
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  short = int(size / crop_pct)
  scale = short / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  pil = _to_pil(image).resize((nw, nh), Image.BICUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  return _from_pil(pil.crop((left, top, left + size, top + size)), image.shape[-1])


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.shape[-1] == channels:
    return image
  if image.shape[-1] == 1:
    return np.repeat(image, channels, axis=-1)
  raise ValueError(f"cannot turn {image.shape[-1]}-channel images into {channels} channels")


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  mean = np.asarray(mean, np.float32) * 255.0
  std = np.asarray(std, np.float32) * 255.0
  if image.ndim >= 2 and mean.shape == std.shape == image.shape[-1:]:
    # The same arithmetic on rows of W*C values: NumPy broadcasting over a last
    # axis of 3 is ~4x slower (it was a fifth of the JPEG pipeline's time).
    out = image.astype(np.float32, order="C")
    rows = out.reshape(-1, image.shape[-2] * image.shape[-1])
    rows -= np.tile(mean, image.shape[-2])
    rows /= np.tile(std, image.shape[-2])
    return out
  return (image.astype(np.float32) - mean) / std


def denormalize(image: np.ndarray, mean, std) -> np.ndarray:
  """Inverse of ``normalize`` into [0, 1] floats (clipped)."""
  out = np.asarray(image, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return np.clip(out, 0.0, 1.0)
