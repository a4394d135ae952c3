"""JPEG records decoded only as far as the augmentation needs.

A TFDS source with a JPEG-encoded ``image`` feature hands the pipeline a
``JpegImage`` (the encoded bytes) instead of a decoded array. RandomResizedCrop
then draws its box from the header's size alone (the same ``rrc_box`` draws, so
the same boxes as on a decoded array) and decodes with PIL's JPEG *draft* mode:
when the crop is at least twice the output size in both directions, libjpeg
scales the DCT by 1/2, 1/4 or 1/8 while decoding, which skips most of the
inverse-DCT and colour-conversion work; the crop is then resized from the reduced
image with the same bicubic filter. Smaller crops (most 224 crops of a
500x375 ImageNet photo) decode at full size, exactly as before. The decoded
pixels of a reduced decode differ from a full decode followed by the bicubic
reduction by a few grey levels (a different but equally antialiased filter).

Anything else (evaluation crops, ``np.asarray``) decodes the full image.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from mae_jax.data import augment
from mae_jax.errors import CorruptImageError, UserError

DRAFT_SCALES = (8, 4, 2)
# What PIL raises for data it cannot decode (truncated, not an image, too large).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


SKIP_HINT = ("Replace or delete it, or set --config.data.skip_corrupt=True to skip "
             "undecodable images (counted in the log).")


def corrupt(where: str, error: BaseException) -> CorruptImageError:
  """The one-line error for an image that cannot be decoded, naming ``where``."""
  if isinstance(error, UnidentifiedImageError):
    reason = "not a recognised image format"
  else:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
  return CorruptImageError(f"{where} cannot be decoded ({reason}). {SKIP_HINT}",
                           what=f"{where} ({reason})")


def _mode(channels: int) -> str:
  if channels not in (1, 3):
    raise ValueError(f"JPEG images decode to 1 or 3 channels, not {channels}")
  return "L" if channels == 1 else "RGB"


def _open(data: bytes) -> Image.Image:
  image = Image.open(io.BytesIO(data))
  if image.format != "JPEG":
    raise ValueError(f"expected JPEG bytes, got {image.format or 'unknown'} data")
  return image


def _to_array(image: Image.Image) -> np.ndarray:
  out = np.asarray(image)
  return out[..., None] if out.ndim == 2 else out


def decode(data: bytes, channels: int = 3) -> np.ndarray:
  """The whole image as uint8 ``[H, W, channels]`` (grey/CMYK JPEGs are converted)."""
  image, mode = _open(data), _mode(channels)
  return _to_array(image if image.mode == mode else image.convert(mode))


def draft_scale(crop_h: int, crop_w: int, size: int) -> int:
  """The largest DCT reduction (8, 4, 2 or 1) that keeps the crop >= ``size`` pixels."""
  for scale in DRAFT_SCALES:
    if crop_h >= scale * size and crop_w >= scale * size:
      return scale
  return 1


def random_resized_crop(data: bytes, rng: np.random.Generator, size: int,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), channels: int = 3,
                        draft: bool = True, sampler: str = "torchvision") -> np.ndarray:
  """``augment.random_resized_crop`` of the decoded image, decoding at reduced size
  (``draft``) when the crop allows. Same RNG draws, same box, bicubic resize."""
  mode = _mode(channels)
  image = _open(data)
  width, height = image.size
  top, left, h, w = augment.rrc_sampler(sampler)(rng, height, width, scale, ratio)
  reduction = draft_scale(h, w, size) if draft else 1
  if reduction > 1 or mode == "L":
    # draft() picks the largest power of two <= min(W // w', H // h') and says which;
    # mode "L" decodes only the luminance of a colour JPEG.
    request = (width // reduction, height // reduction) if reduction > 1 else None
    drafted = image.draft(mode if mode == "L" else image.mode, request)
    reduction = width / drafted[1][2] if drafted else 1
  if image.mode != mode:  # convert() to the same mode would copy the whole image
    image = image.convert(mode)
  box = (left / reduction, top / reduction, (left + w) / reduction, (top + h) / reduction)
  return _to_array(image.resize((size, size), Image.BICUBIC, box=box))


class JpegImage:
  """Encoded JPEG bytes standing in for a decoded ``[H, W, C]`` uint8 array.

  ``shape`` comes from the header; ``np.asarray(image)`` decodes everything;
  ``random_resized_crop`` decodes only as much as the crop needs.
  """
  __slots__ = ("data", "channels", "where", "_shape")

  def __init__(self, data: bytes, channels: int = 3, where: str = "JPEG image"):
    self.data = bytes(data)
    self.channels = channels
    self.where = where  # named in decoding errors, e.g. "imagenet2012: record 17"
    self._shape = None

  def _decoding(self, fn, *args):
    try:
      return fn(self.data, *args)
    except UserError:
      raise
    except DECODE_ERRORS as e:
      raise corrupt(self.where, e) from None

  @property
  def shape(self) -> tuple[int, int, int]:
    if self._shape is None:
      width, height = self._decoding(lambda data: _open(data).size)
      self._shape = (height, width, self.channels)
    return self._shape

  @property
  def ndim(self) -> int:
    return 3

  def __array__(self, dtype=None, copy=None):
    out = self._decoding(decode, self.channels)
    return out if dtype is None else out.astype(dtype)

  def random_resized_crop(self, rng: np.random.Generator, size: int, scale=(0.2, 1.0),
                          ratio=(3 / 4, 4 / 3), sampler: str = "torchvision") -> np.ndarray:
    return self._decoding(random_resized_crop, rng, size, scale, ratio, self.channels, True,
                          sampler)

  def __repr__(self):
    return f"JpegImage({len(self.data)} bytes, channels={self.channels})"
