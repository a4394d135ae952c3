"""Per-image augmentations in NumPy/PIL, driven by a ``np.random.Generator``.

RandomResizedCrop draws its box with one of two samplers (``data.augment.rrc_sampler``),
crops and resizes with antialiased bicubic interpolation, as the official MAE code
does (torchvision's ``resized_crop``: crop first, then resize):

* ``torchvision`` (pretraining, fine-tuning): 10 tries at a random area in ``scale``
  and log-uniform aspect ratio in ``ratio``, then a centre-crop fallback;
* ``clamped`` (the linear probe): the official ``util/crop.RandomResizedCrop``, one
  draw of area and aspect with both sides clamped to the image, no retry loop.

The crop is decoded and resized by one of two backends (``data.augment.rrc_backend``):

* ``pil`` (default): PIL, the official loader's pixels;
* ``fast``: JPEGs decoded by simplejpeg (libjpeg-turbo; the same pixels as PIL's
  decode) and resized by torch's uint8 antialiased bicubic kernel (AVX2), about 3x
  faster than PIL's resize. Its pixels differ from ``pil`` by at most 2 grey levels
  (mean 0.02 on ImageNet-like photos; ``tests/test_jpeg.py``). Needs
  ``pip install 'mae_jax[fast]'``; torch runs with one intra-op thread in the
  process that uses it (the input pipeline's workers are its parallelism).

Images with other channel counts than 1 or 3, or of uint16 or float32 pixels, are
cropped and resized in NumPy (``mae_jax.data.arrays``, PIL's filter band by band).

``size`` is an int (a square) or ``(height, width)``; the crop box's aspect ratio
is drawn around the output's (``target_ratio``), so a crop keeps the shape the
config asks for (a square output: ``rrc_ratio`` as given).

Transforms return images of the source's pixel type (uint8 for photos);
normalisation happens on the device (``mae_jax.train.step.to_model_input``), so
batches travel as uint8 (uint16 stays uint16).
"""
from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
from PIL import Image

from mae_jax.data import arrays
from mae_jax.errors import ConfigError
from mae_jax.sizes import image_hw


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


RRC_BACKENDS = {"pil": (), "fast": ("simplejpeg", "torch")}


def rrc_backend(name: str) -> str:
  """``name`` if ``data.augment.rrc_backend`` names a backend whose packages are installed."""
  if name not in RRC_BACKENDS:
    raise ConfigError(f"data.augment.rrc_backend={name!r} is unknown; choose "
                      f"{' or '.join(RRC_BACKENDS)}.")
  missing = [m for m in RRC_BACKENDS[name] if importlib.util.find_spec(m) is None]
  if missing:
    raise ConfigError(f"data.augment.rrc_backend={name!r} needs {' and '.join(missing)}: "
                      f"pip install 'mae_jax[fast]', or set --config.data.augment."
                      f"rrc_backend=pil.")
  return name


def rrc_options(aug) -> dict:
  """RandomResizedCrop keywords from ``data.augment``; bad names fail here, not in a
  worker."""
  sampler = aug.get("rrc_sampler", "torchvision")
  rrc_sampler(sampler)
  return dict(scale=tuple(aug.rrc_scale), ratio=tuple(aug.rrc_ratio), sampler=sampler,
              backend=rrc_backend(aug.get("rrc_backend", "pil")))


def _to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def pil_to_array(pil: Image.Image, flip: bool = False) -> np.ndarray:
  """uint8 ``[H, W, C]`` pixels of an L or RGB image, mirrored left-right if ``flip``
  (PIL's transpose: a NumPy ``[:, ::-1]`` copy of 3-byte pixels costs ~10x more)."""
  if flip:
    pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  out = np.asarray(pil)
  return out[..., None] if out.ndim == 2 else out


@functools.lru_cache(maxsize=None)
def _torch():
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  return torch


def target_ratio(ratio, size) -> tuple[float, float]:
  """RandomResizedCrop's aspect-ratio range (width / height) for an output of ``size``:
  ``ratio`` times the output's own aspect, so a ``(64, 96)`` output draws boxes about
  1.5 times as wide as high (a square output: ``ratio`` unchanged)."""
  h, w = image_hw(size)
  return (ratio[0] * w / h, ratio[1] * w / h) if h != w else tuple(ratio)


def uses_arrays(image) -> bool:
  """Whether ``image`` is cropped and resized in NumPy (``arrays``): not 1 or 3
  channels of uint8, which PIL holds."""
  return not hasattr(image, "random_resized_crop") and (
      image.dtype != np.uint8 or image.shape[-1] not in (1, 3))


def torch_resize(image: np.ndarray, size, flip: bool = False) -> np.ndarray:
  """uint8 ``[h, w, C]`` -> ``[H, W, C]`` (``size``: an int or ``(H, W)``) with torch's antialiased bicubic
  (``interpolate(..., antialias=True)``; its uint8 kernel follows PIL's filter),
  mirrored left-right if ``flip``."""
  torch = _torch()
  image = np.require(image, np.uint8, ("C", "W"))  # from_numpy wants writable memory
  # An NCHW view of channels-last memory (batch stride first, so torch sees it as
  # such): the output is channels-last too, an HWC array without a transposing copy.
  x = torch.from_numpy(image)[None].permute(0, 3, 1, 2)
  y = torch.nn.functional.interpolate(x, size=image_hw(size), mode="bicubic",
                                      antialias=True)
  y = y[0].permute(1, 2, 0)
  return np.ascontiguousarray((y.flip(1) if flip else y).numpy())


def resize_crop(image: np.ndarray, box, size, backend: str = "pil",
                flip: bool = False) -> np.ndarray:
  """The ``(top, left, h, w)`` crop of a uint8 ``[H, W, C]`` array resized to
  ``size`` (antialiased bicubic) and mirrored if ``flip``: torchvision's
  ``resized_crop`` with PIL, or the same with torch's kernel (``backend="fast"``);
  other channel counts and pixel types in NumPy (``arrays.resized_crop``)."""
  if uses_arrays(image):
    return arrays.resized_crop(image, box, image_hw(size), flip)
  top, left, h, w = box
  crop = image[top:top + h, left:left + w]
  if backend == "fast":
    return torch_resize(crop, size, flip)
  out_h, out_w = image_hw(size)
  return pil_to_array(_to_pil(crop).resize((out_w, out_h), Image.BICUBIC), flip)


def flip_draw(rng: np.random.Generator, hflip: bool) -> bool:
  """The horizontal-flip coin, drawn after the crop box (torchvision's order)."""
  return bool(hflip and rng.random() < 0.5)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                        sampler: str = "torchvision", backend: str = "pil",
                        hflip: bool = False) -> np.ndarray:
  """RandomResizedCrop, then (``hflip``) a horizontal flip with probability 0.5. One
  crop box and one flip per image; a clip ``[T, H, W, C]`` gets them on every frame."""
  if hasattr(image, "random_resized_crop"):  # still encoded: mae_jax.data.jpeg.JpegImage
    return image.random_resized_crop(rng, size, scale, ratio, sampler, backend, hflip)
  box = rrc_sampler(sampler)(rng, image.shape[-3], image.shape[-2], scale,
                             target_ratio(ratio, size))
  flip = flip_draw(rng, hflip)
  if tuple(box) == (0, 0) + image_hw(size) == (0, 0) + image.shape[-3:-1]:
    return image[..., ::-1, :] if flip else image  # the whole image at its own size
  if image.ndim == 4:
    return np.stack([resize_crop(frame, box, size, backend, flip) for frame in image])
  return resize_crop(image, box, size, backend, flip)


def crop_flip(image, rng: np.random.Generator, size, channels: int, hflip: bool,
              **rrc) -> np.ndarray:
  """RandomResizedCrop (``rrc_options``) and the flip: a contiguous
  ``[H, W, channels]`` array of the image's pixel type (``[T, H, W, channels]`` for a
  clip)."""
  image = random_resized_crop(image, rng, size, hflip=hflip, **rrc)
  return match_channels(np.ascontiguousarray(image), channels)


def center_crop(image: np.ndarray, size, crop_pct: float = 0.875) -> np.ndarray:
  """Eval transform: identity at the right size, else resize shorter side + centre crop
  (every frame of a clip alike). A ``(height, width)`` size or an image PIL cannot
  hold: ``arrays.center_crop`` (aspect ratio kept, the centre cut out)."""
  image = np.asarray(image)  # decodes an encoded image
  if image.ndim == 4:
    return np.stack([center_crop(frame, size, crop_pct) for frame in image])
  h, w = image.shape[:2]
  out_h, out_w = image_hw(size)
  if (h, w) == (out_h, out_w):
    return image
  if out_h != out_w or uses_arrays(image):
    return arrays.center_crop(image, (out_h, out_w), crop_pct)
  size = out_h
  short = int(size / crop_pct)
  scale = short / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  pil = _to_pil(image).resize((nw, nh), Image.BICUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  return pil_to_array(pil.crop((left, top, left + size, top + size)))


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.shape[-1] == channels:
    return image
  if image.shape[-1] == 1:
    return np.repeat(image, channels, axis=-1)
  raise ValueError(f"cannot turn {image.shape[-1]}-channel images into {channels} channels")


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """``(pixels - mean) / std`` as float32, ``mean/std`` in units of the pixel type's
  range (``arrays.pixel_scale``: 255 for uint8, 65535 for uint16, 1 for float32)."""
  scale = arrays.pixel_scale(image.dtype)
  mean = np.asarray(mean, np.float32) * scale
  std = np.asarray(std, np.float32) * scale
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
