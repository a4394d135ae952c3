"""Fine-tuning augmentations (the official recipe, after timm) and input pipelines.

Per example, in the grain pipeline (PIL/NumPy, driven by the record's
``np.random.Generator``, so a seed and a batch index fix every draw):

* RandomResizedCrop (bicubic) + horizontal flip (``mae_jax.data.augment``);
* RandAugment ``rand-m9-mstd0.5-inc1`` (``rand_augment``): 2 ops per image drawn
  with replacement from timm's 15 "increasing" ops, each applied with
  probability 0.5 at magnitude ``N(9, 0.5)`` clipped to [0, 10]; geometric ops
  resample bicubically (timm built with ``interpolation='bicubic'``, as the
  official fine-tuning does);
* RandomErasing (timm's ``pixel`` mode: probability 0.25, one box of 2%-33% of the
  area, aspect 0.3-3.3, filled with N(0, 1) noise per pixel and channel of the
  normalised image). The box is drawn here (``erase_params``, shipped with the
  uint8 image); normalisation and the noise fill run in the jitted step
  (``mae_jax.train.classifier.erase_batch``), after which the images equal
  ``random_erasing`` of the normalised image except for the noise values.

Per global batch: timm's ``Mixup`` in ``batch`` mode (one lambda per batch, the
batch mixed with its reverse), mixup alpha 0.8 or cutmix alpha 1.0 switched with
probability 0.5, the area-corrected lambda for cutmix, and label smoothing 0.1 in
the soft targets. The draws (``draw_mix``) are made on the host from ``(seed,
step)``, the same on every process; the mixing runs inside the jitted step on the
global batch, so it does not depend on how the batch is split over processes.
``mixup_cutmix`` is its NumPy reference.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mae_jax.data import augment
from mae_jax.errors import ConfigError

# ------------------------------------------------------------------ RandAugment

MAX_LEVEL = 10.0


def _sign(rng: np.random.Generator, value: float) -> float:
  return -value if rng.random() < 0.5 else value


# The official fine-tuning builds timm's transform with interpolation='bicubic', which
# makes every geometric op resample bicubically (timm's own default, used only
# without that argument, picks bilinear or bicubic at random).
RESAMPLE = Image.BICUBIC


def _affine(img: Image.Image, matrix, fill) -> Image.Image:
  return img.transform(img.size, Image.AFFINE, matrix, resample=RESAMPLE, fillcolor=fill)


def _rotate(img, level, fill, rng):
  degrees = _sign(rng, level / MAX_LEVEL * 30.0)
  return img.rotate(degrees, resample=RESAMPLE, fillcolor=fill)


def _enhance(enhancer):
  def op(img, level, fill, rng):
    del fill
    return enhancer(img).enhance(1.0 + _sign(rng, level / MAX_LEVEL * 0.9))
  return op


def _solarize_add(img, level, fill, rng):
  del fill, rng
  add = int(level / MAX_LEVEL * 110)
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _shear(axis):
  def op(img, level, fill, rng):
    f = _sign(rng, level / MAX_LEVEL * 0.3)
    return _affine(img, (1, f, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, f, 1, 0), fill)
  return op


def _translate(axis, translate_pct: float = 0.45):
  def op(img, level, fill, rng):
    pct = _sign(rng, level / MAX_LEVEL * translate_pct)
    if axis == "x":
      return _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill)
    return _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill)
  return op


def _posterize(img, level, fill, rng):
  del fill, rng
  bits = 4 - int(level / MAX_LEVEL * 4)
  if bits <= 0:  # timm's 0 bits (PIL now refuses it): every pixel becomes 0
    return Image.new(img.mode, img.size, 0)
  return img if bits >= 8 else ImageOps.posterize(img, bits)


def _solarize(img, level, fill, rng):
  del fill, rng
  return ImageOps.solarize(img, 256 - int(level / MAX_LEVEL * 256))


# The "increasing" op set of timm (``inc1``): higher magnitude = stronger for every op.
RAND_OPS = {
    "AutoContrast": lambda img, level, fill, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, fill, rng: ImageOps.equalize(img),
    "Invert": lambda img, level, fill, rng: ImageOps.invert(img),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear("x"),
    "ShearY": _shear("y"),
    "TranslateXRel": _translate("x"),
    "TranslateYRel": _translate("y"),
}


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  prob: float = 0.5


def parse_rand_augment(spec: str) -> RandAugmentSpec | None:
  """timm's config string, e.g. ``rand-m9-mstd0.5-inc1`` (``""``/``none`` = off).

  Keys: ``m`` magnitude, ``mstd`` magnitude noise std, ``n`` ops per image,
  ``p`` probability of each op, ``inc`` must be 1 (only the increasing set exists).
  """
  if not spec or spec == "none":
    return None
  parts = spec.split("-")
  if parts[0] != "rand":
    raise ConfigError(f"RandAugment spec {spec!r} must start with 'rand-', e.g. "
                      "'rand-m9-mstd0.5-inc1'.")
  values = {}
  for part in parts[1:]:
    for key in ("mstd", "inc", "m", "n", "p"):
      if part.startswith(key):
        try:
          values[key] = float(part[len(key):])
        except ValueError:
          raise ConfigError(f"bad value in RandAugment spec {spec!r}: {part!r}") from None
        break
    else:
      raise ConfigError(f"unknown key {part!r} in RandAugment spec {spec!r}; known: m, "
                        "mstd, n, p, inc.")
  if values.get("inc", 1) != 1:
    raise ConfigError("only the increasing op set (inc1) is implemented.")
  return RandAugmentSpec(num_ops=int(values.get("n", 2)), magnitude=values.get("m", 9.0),
                         magnitude_std=values.get("mstd", 0.5), prob=values.get("p", 0.5))


def rand_augment(image: np.ndarray, rng: np.random.Generator, spec: RandAugmentSpec,
                 fill: tuple[int, ...]) -> np.ndarray:
  """RandAugment on a uint8 ``[H, W, C]`` image (C = 1 or 3)."""
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  fill_color = fill[0] if channels == 1 else tuple(fill)
  names = list(RAND_OPS)
  for index in rng.integers(0, len(names), size=spec.num_ops):  # with replacement
    if spec.prob < 1.0 and rng.random() > spec.prob:
      continue
    level = spec.magnitude
    if spec.magnitude_std > 0:
      level = rng.normal(spec.magnitude, spec.magnitude_std)
    level = float(np.clip(level, 0.0, MAX_LEVEL))
    pil = RAND_OPS[names[index]](pil, level, fill_color, rng)
  out = np.asarray(pil)
  return out[..., None] if out.ndim == 2 else out


# ------------------------------------------------------------------ RandomErasing


def erase_box(rng: np.random.Generator, height: int, width: int, min_area=0.02,
              max_area=1 / 3, log_ratio=(math.log(0.3), math.log(1 / 0.3))):
  """``(top, left, h, w)`` of timm's RandomErasing box, or None after 10 failed tries."""
  area = height * width
  for _ in range(10):
    target = rng.uniform(min_area, max_area) * area
    aspect = math.exp(rng.uniform(*log_ratio))
    h = int(round(math.sqrt(target * aspect)))
    w = int(round(math.sqrt(target / aspect)))
    if w < width and h < height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return None


ERASE_MODES = ("pixel", "rand", "const")


def erase_params(rng: np.random.Generator, height: int, width: int,
                 prob: float = 0.25) -> np.ndarray:
  """timm RandomErasing's draws for one image: int32 ``[top, left, h, w]``, zeros when
  nothing is erased (the probability draw failed, or no box fitted)."""
  if prob <= 0 or rng.random() > prob:
    return np.zeros(4, np.int32)
  return np.asarray(erase_box(rng, height, width) or (0, 0, 0, 0), np.int32)


def random_erasing(image: np.ndarray, rng: np.random.Generator, prob: float = 0.25,
                   mode: str = "pixel") -> np.ndarray:
  """timm RandomErasing on a normalised float ``[H, W, C]`` image (one box); the NumPy
  reference of the trainer's on-device erasing."""
  top, left, h, w = (int(v) for v in erase_params(rng, image.shape[0], image.shape[1], prob))
  if h == 0:
    return image
  out = image.copy()
  c = image.shape[-1]
  if mode == "pixel":
    fill = rng.standard_normal((h, w, c))
  elif mode == "rand":
    fill = np.broadcast_to(rng.standard_normal((1, 1, c)), (h, w, c))
  elif mode == "const":
    fill = np.zeros((h, w, c))
  else:
    raise ConfigError(f"random erasing mode {mode!r} is unknown; choose pixel, rand, const.")
  out[top:top + h, left:left + w] = fill.astype(image.dtype)
  return out


# ------------------------------------------------------------------ Mixup / CutMix


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
  """timm ``one_hot``: ``1 - smoothing + smoothing/K`` on the label, ``smoothing/K`` off."""
  off = smoothing / num_classes
  out = np.full((len(labels), num_classes), off, np.float32)
  out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
  return out


def cutmix_box(rng: np.random.Generator, height: int, width: int, lam: float):
  """timm ``rand_bbox``: a box of side ``sqrt(1 - lam)`` centred anywhere, clipped.

  Returns ``(y0, y1, x0, x1)`` and the area-corrected ``lam`` (1 - box area / image).
  """
  ratio = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * ratio), int(width * ratio)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
  x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
  return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


@dataclasses.dataclass(frozen=True)
class MixInfo:
  lam: float
  cutmix: bool
  box: tuple[int, int, int, int] | None

  def as_vector(self) -> np.ndarray:
    """``[pixel lam, target lam, y0, y1, x0, x1]`` for the jitted step's mixing.

    Pixels are ``where(in box, reversed, images * pixel_lam + reversed * (1 -
    pixel_lam))``: mixup has an empty box, cutmix a pixel lam of 1.
    """
    y0, y1, x0, x1 = self.box or (0, 0, 0, 0)
    return np.asarray([1.0 if self.cutmix else self.lam, self.lam, y0, y1, x0, x1],
                      np.float32)


def draw_mix(rng: np.random.Generator, height: int, width: int, *, mixup_alpha: float = 0.8,
             cutmix_alpha: float = 1.0, prob: float = 1.0,
             switch_prob: float = 0.5) -> MixInfo:
  """timm ``Mixup``'s draws for one batch (mode ``batch``): lambda, mode and box."""
  lam, use_cutmix, box = 1.0, False, None
  if (mixup_alpha > 0 or cutmix_alpha > 0) and rng.random() < prob:
    if mixup_alpha > 0 and cutmix_alpha > 0:
      use_cutmix = bool(rng.random() < switch_prob)
    else:
      use_cutmix = cutmix_alpha > 0
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
  if lam < 1.0 and use_cutmix:
    box, lam = cutmix_box(rng, height, width, lam)
  return MixInfo(lam=lam, cutmix=use_cutmix, box=box)


def mixup_cutmix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
                 num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1):
  """timm ``Mixup`` (mode ``batch``) on a host batch: ``(images, soft targets, info)``.

  ``images`` ``[B, H, W, C]`` are mixed with ``images[::-1]``; targets are
  ``lam * y + (1 - lam) * y[::-1]`` of label-smoothed one-hots, so rows sum to 1.
  With both alphas 0 (or the ``prob`` draw failing) only smoothing applies. The
  NumPy reference of the trainer's on-device mixing
  (``mae_jax.train.classifier.mix_batch``), which takes the same ``draw_mix``.
  """
  if len(images) % 2:
    raise ConfigError(f"mixup/cutmix needs an even batch, got {len(images)}.")
  info = draw_mix(rng, images.shape[1], images.shape[2], mixup_alpha=mixup_alpha,
                  cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
  out = images
  if info.box is not None:
    y0, y1, x0, x1 = info.box
    out = images.copy()
    out[:, y0:y1, x0:x1] = images[::-1, y0:y1, x0:x1]
  elif info.lam < 1.0:
    out = (images * info.lam + images[::-1] * (1.0 - info.lam)).astype(images.dtype)
  y = smooth_one_hot(labels, num_classes, smoothing)
  targets = (y * info.lam + y[::-1] * (1.0 - info.lam)).astype(np.float32)
  return out, targets, info


# ------------------------------------------------------------------ pipelines


def _finetune_transform(record: dict, rng: np.random.Generator, *, size, channels, hflip,
                        rand_aug, fill, reprob, **rrc) -> dict:
  image = augment.crop_flip(record["image"], rng, size, channels, hflip, **rrc)
  if rand_aug is not None:
    image = rand_augment(image, rng, rand_aug, fill)
  return {"image": image, "label": np.int32(record["label"]),
          "erase": erase_params(rng, image.shape[-3], image.shape[-2], reprob)}


def train_transform(data_config, mean, std):
  """The fine-tuning record transform for ``pipeline.train_iterator``: RRC + flip,
  RandAugment, the RandomErasing box (uint8 image out; normalisation, erasing and
  mixup/cutmix happen per batch on the device)."""
  aug = data_config.augment
  if aug.remode not in ERASE_MODES:
    raise ConfigError(f"data.augment.remode={aug.remode!r} is unknown; choose "
                      f"{', '.join(ERASE_MODES)}.")
  return functools.partial(
      _finetune_transform, size=data_config.image_size, channels=data_config.channels,
      hflip=aug.hflip, rand_aug=parse_rand_augment(aug.rand_augment),
      fill=tuple(int(round(m * 255)) for m in mean), reprob=float(aug.reprob),
      **augment.rrc_options(aug))
