"""Images of any number of channels and of 8 bits, 16 bits or floats, as NumPy arrays.

PIL holds at most 4 channels of 8 bits, so images with other channel counts or
pixel types (multispectral bands, 16-bit sensors) are read, cropped and resized
here, in NumPy, and travel to the device in their own type (``uint16`` stays
``uint16``): the step normalises them (``mae_jax.train.step.to_model_input``).

* Pixel types (``PIXEL_SCALES``): ``uint8``, ``uint16`` and ``float32``. The
  normalisation statistics (``data.mean/std``) are in units of the type's full
  range: pixel / 255, pixel / 65535, or the float itself.
* Files: ``.npy`` (``np.load``, no pickles) and multi-band TIFF (``tifffile``) of
  shape ``[H, W, C]`` (a TIFF stored band-first, ``[C, H, W]``, is transposed),
  or ``[H, W]`` for one channel.
* Resizing: antialiased bicubic (``resize_matrix``), PIL's filter computed in
  float: the same weights as PIL's ``Image.resize(..., BICUBIC)`` of each band as a
  float image (tested against it), so an N-band crop is what PIL gives band by band.
"""
from __future__ import annotations

import functools
import io

import numpy as np

from mae_jax import fileio
from mae_jax.errors import CorruptImageError, DataError

PIXEL_SCALES = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}
ARRAY_EXTENSIONS = (".npy", ".tif", ".tiff")


def pixel_scale(dtype) -> float:
  """What 1.0 of ``data.mean/std`` is in pixels of ``dtype`` (255 for uint8)."""
  name = np.dtype(dtype).name
  if name not in PIXEL_SCALES:
    raise DataError(f"{name} pixels are not supported; images must be "
                    f"{', '.join(PIXEL_SCALES)}.")
  return PIXEL_SCALES[name]


def read_image_bytes(path: str, hint: str = "") -> bytes:
  """The bytes of one image file (local or ``gs://``); a ``CorruptImageError`` naming
  it (and ``hint``, what to do) when it cannot be read."""
  try:
    return fileio.read_bytes(path)
  except OSError as e:
    reason = e.strerror or str(e)
    raise CorruptImageError(f"{path} cannot be read ({reason}).{' ' + hint if hint else ''}",
                            what=f"{path} ({reason})") from None


def read_array(path, channels: int) -> np.ndarray:
  """The ``.npy`` or TIFF file at ``path`` (local or ``gs://``) as ``[H, W, C]`` with
  ``C`` = ``channels`` (or 1, repeated later); ``CorruptImageError`` naming the file
  when it cannot be read, and a ``DataError`` for a shape or type mae_jax cannot use."""
  path = str(path)
  data = read_image_bytes(path)
  try:
    if path.lower().endswith(".npy"):
      array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
      import tifffile
      array = tifffile.imread(io.BytesIO(data))
  except ImportError:
    raise DataError(f"{path}: reading TIFF images needs tifffile: pip install "
                    "'mae_jax[multispectral]'.") from None
  except Exception as e:  # a damaged file  pylint: disable=broad-except
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CorruptImageError(f"{path} cannot be decoded ({reason}).",
                            what=f"{path} ({reason})") from None
  return as_hwc(array, channels, path)


def as_hwc(array: np.ndarray, channels: int, where: str) -> np.ndarray:
  """``array`` as ``[H, W, C]`` of a supported type; a band-first ``[C, H, W]`` array
  (a planar TIFF) is transposed when only its first axis has ``channels`` entries."""
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim == 3 and array.shape[-1] not in (1, channels) and \
      array.shape[0] in (1, channels):
    array = np.moveaxis(array, 0, -1)
  if array.ndim != 3:
    raise DataError(f"{where}: an image array must be [H, W, C] (or [H, W]), got shape "
                    f"{array.shape}.")
  if array.shape[-1] not in (1, channels):
    raise DataError(f"{where} has {array.shape[-1]} channels, data.channels={channels}; "
                    f"set --config.data.channels={array.shape[-1]}.")
  if array.dtype.name not in PIXEL_SCALES:
    raise DataError(f"{where} holds {array.dtype.name} pixels; mae_jax reads "
                    f"{', '.join(PIXEL_SCALES)} images (convert with "
                    "array.astype(np.uint16) or np.float32).")
  return np.ascontiguousarray(array)


# ------------------------------------------------------------------ resizing


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=256)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out, in]`` float32 weights of PIL's antialiased bicubic resize along one axis.

  PIL's ``precompute_coeffs``: the filter (Keys, ``a = -0.5``, support 2) widened by
  the scale when shrinking, sampled at the pixel centres of a window around each
  output pixel's centre, normalised to sum 1.
  """
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 2.0 * filter_scale
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = _bicubic((np.arange(lo, hi) - center + 0.5) / filter_scale)
    total = taps.sum()
    weights[i, lo:hi] = taps / total if total else taps
  return weights.astype(np.float32)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``[h, w, C]`` (any C, uint8/uint16/float32) resized to ``size = (H, W)`` with
  antialiased bicubic; integer types are rounded and clipped to their range."""
  out_h, out_w = size
  h, w = image.shape[:2]
  if (h, w) == (out_h, out_w):
    return image
  x = image.astype(np.float32)
  x = np.einsum("oh,hwc->owc", resize_matrix(h, out_h), x)
  x = np.einsum("pw,owc->opc", resize_matrix(w, out_w), x)
  if image.dtype != np.float32:
    x = np.clip(np.round(x), 0, np.iinfo(image.dtype).max)
  return x.astype(image.dtype)


def resized_crop(image: np.ndarray, box, size: tuple[int, int], flip: bool) -> np.ndarray:
  """The ``(top, left, h, w)`` crop of ``image`` resized to ``size`` and mirrored if
  ``flip`` (a clip ``[T, H, W, C]``: every frame alike)."""
  top, left, h, w = box
  if image.ndim == 4:
    return np.stack([resized_crop(frame, box, size, flip) for frame in image])
  out = resize(image[top:top + h, left:left + w], size)
  return np.ascontiguousarray(out[:, ::-1] if flip else out)


def center_crop(image: np.ndarray, size: tuple[int, int], crop_pct: float) -> np.ndarray:
  """The evaluation crop: the image resized to cover ``size / crop_pct`` with its
  aspect ratio kept, then the centre ``size``; identity at the right size."""
  out_h, out_w = size
  h, w = image.shape[:2]
  if (h, w) == (out_h, out_w):
    return image
  scale = max(out_h / crop_pct / h, out_w / crop_pct / w)
  nh, nw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
  resized = resize(image, (nh, nw))
  top, left = (nh - out_h) // 2, (nw - out_w) // 2
  return np.ascontiguousarray(resized[top:top + out_h, left:left + out_w])


# ------------------------------------------------------------------ statistics

STATS_MAX_IMAGES = 1000


def channel_stats(source, max_images: int = STATS_MAX_IMAGES
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of ``source``'s images (up to ``max_images`` of them,
  evenly spaced, whole images), in ``data.mean/std`` units (``pixel_scale``)."""
  n = len(source)
  if not n:
    raise DataError(f"{source.name} has no images to compute data.mean/std from.")
  picks = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
  total = total_sq = None
  count = 0
  for i in picks:
    image = np.asarray(source[int(i)]["image"])
    scale = pixel_scale(image.dtype)
    x = image.reshape(-1, image.shape[-1]).astype(np.float64) / scale
    if total is None:
      total, total_sq = x.sum(0), (x * x).sum(0)
    else:
      total, total_sq = total + x.sum(0), total_sq + (x * x).sum(0)
    count += x.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  std = np.where(std > 0, std, 1.0)  # a constant band: leave its scale alone
  return (tuple(round(float(m), 6) for m in mean),
          tuple(max(round(float(s), 6), 1e-6) for s in std))

