"""JPEG records decoded only as far as the augmentation needs.

A TFDS or folder source with JPEG images hands the pipeline a ``JpegImage`` (the
encoded bytes) instead of a decoded array. RandomResizedCrop then draws its box
from the header's size alone (the same ``rrc_box`` draws, so the same boxes as on a
decoded array) and decodes with JPEG *draft* mode: when the crop is at least twice
the output size in both directions, libjpeg scales the DCT by 1/2, 1/4 or 1/8 while
decoding, which skips most of the inverse-DCT and colour-conversion work; the crop
is then resized from the reduced image with the same bicubic filter. Smaller crops
(every 224 crop of a 500x375 ImageNet photo) decode at full size, and then the
result is torchvision's ``resized_crop`` of the decoded image, pixel for pixel.
The pixels of a reduced decode differ from a full decode followed by the bicubic
reduction by a few grey levels (a different but equally antialiased filter).

Two backends (``data.augment.rrc_backend``, see ``mae_jax.data.augment``): ``pil``
decodes with PIL; ``fast`` decodes full-size crops with simplejpeg (the same
libjpeg-turbo pixels as PIL, tested) and resizes them with torch's uint8 kernel;
reduced decodes, and JPEGs that simplejpeg cannot convert to RGB/grey (CMYK, YCCK),
go through PIL in both.

Anything else (evaluation crops, ``np.asarray``) decodes the full image with PIL.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from mae_jax.data import augment
from mae_jax.errors import CorruptImageError, UserError
from mae_jax.sizes import image_hw

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


def decode(data: bytes, channels: int = 3) -> np.ndarray:
  """The whole image as uint8 ``[H, W, channels]`` (grey/CMYK JPEGs are converted)."""
  image, mode = _open(data), _mode(channels)
  return augment.pil_to_array(image if image.mode == mode else image.convert(mode))


def draft_scale(crop_h: int, crop_w: int, size) -> int:
  """The largest DCT reduction (8, 4, 2 or 1) that keeps the crop >= ``size`` pixels
  (an int or ``(height, width)``)."""
  out_h, out_w = image_hw(size)
  for scale in DRAFT_SCALES:
    if crop_h >= scale * out_h and crop_w >= scale * out_w:
      return scale
  return 1


def random_resized_crop(data: bytes, rng: np.random.Generator, size,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), channels: int = 3,
                        draft: bool = True, sampler: str = "torchvision",
                        backend: str = "pil", hflip: bool = False) -> np.ndarray:
  """``augment.random_resized_crop`` of the decoded image (and the flip), decoding at
  reduced size (``draft``) when the crop allows. Same RNG draws, same box, bicubic
  resize. With ``backend="fast"`` a full-size decode is simplejpeg's and the resize
  torch's; reduced decodes are PIL's in both backends (simplejpeg's are the same
  pixels, and PIL resizes at sub-pixel box coordinates)."""
  mode = _mode(channels)
  if backend == "fast":
    (height, width, colorspace), image = turbo_header(data), None
  else:
    image, colorspace = _open(data), None
    width, height = image.size
  box = augment.rrc_sampler(sampler)(rng, height, width, scale,
                                     augment.target_ratio(ratio, size))
  flip = augment.flip_draw(rng, hflip)
  reduction = draft_scale(box[2], box[3], size) if draft else 1
  if backend == "fast" and reduction == 1:
    decoded = turbo_decode(data, channels) if colorspace in TURBO_COLORSPACES else None
    return augment.resize_crop(decode(data, channels) if decoded is None else decoded, box,
                               size, "fast", flip)
  return _pil_crop(_open(data) if image is None else image, mode, box, reduction, size, flip)


def _pil_crop(image: Image.Image, mode: str, box, reduction: int, size,
              flip: bool) -> np.ndarray:
  """Decode (at 1/``reduction`` when > 1), crop ``box`` and resize with PIL to ``size``
  (an int or ``(height, width)``)."""
  width, height = image.size
  out_h, out_w = image_hw(size)
  top, left, h, w = box
  if reduction > 1 or mode == "L":
    # draft() picks the largest power of two <= min(W // w', H // h') and says which;
    # mode "L" decodes only the luminance of a colour JPEG.
    request = (width // reduction, height // reduction) if reduction > 1 else None
    drafted = image.draft(mode if mode == "L" else image.mode, request)
    reduction = width / drafted[1][2] if drafted else 1
  if image.mode != mode:  # convert() to the same mode would copy the whole image
    image = image.convert(mode)
  if reduction == 1:  # torchvision's resized_crop: crop, then resize
    image = image.crop((left, top, left + w, top + h))
    return augment.pil_to_array(image.resize((out_w, out_h), Image.BICUBIC), flip)
  # sub-pixel box coordinates in the reduced image
  box = (left / reduction, top / reduction, (left + w) / reduction, (top + h) / reduction)
  return augment.pil_to_array(image.resize((out_w, out_h), Image.BICUBIC, box=box), flip)


# simplejpeg converts these to RGB or grey as PIL does; others (CMYK, YCCK) go to PIL.
TURBO_COLORSPACES = ("YCbCr", "Gray", "RGB")


def turbo_header(data: bytes) -> tuple[int, int, str | None]:
  """``(height, width, colorspace)`` from simplejpeg; PIL's size and ``None`` when
  simplejpeg cannot read the header (PIL then decides whether, and why, it is no JPEG)."""
  import simplejpeg  # pylint: disable=import-outside-toplevel
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    return height, width, colorspace
  except ValueError:
    width, height = _open(data).size
    return height, width, None


def turbo_decode(data: bytes, channels: int = 3) -> np.ndarray | None:
  """uint8 ``[H, W, channels]`` decoded by simplejpeg (libjpeg-turbo, straight into
  NumPy): the pixels PIL's decode gives (tested). ``None`` where simplejpeg refuses
  (libjpeg warnings PIL ignores, corrupt data: PIL then decides)."""
  import simplejpeg  # pylint: disable=import-outside-toplevel
  try:
    return simplejpeg.decode_jpeg(data, colorspace="GRAY" if _mode(channels) == "L" else "RGB")
  except ValueError:
    return None


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

  def random_resized_crop(self, rng: np.random.Generator, size, scale=(0.2, 1.0),
                          ratio=(3 / 4, 4 / 3), sampler: str = "torchvision",
                          backend: str = "pil", hflip: bool = False) -> np.ndarray:
    return self._decoding(random_resized_crop, rng, size, scale, ratio, self.channels, True,
                          sampler, backend, hflip)

  def __repr__(self):
    return f"JpegImage({len(self.data)} bytes, channels={self.channels})"
