"""Reconstruction grids: original | masked input | reconstruction | reconstruction
with the visible patches pasted back, under column titles. ``mae-jax visualize``
writes one as PNG, of dataset images or of the user's own files (``load_images``).
A norm-pix model's hidden patches get statistics estimated from the visible patches
(``unnormalize_prediction``), unless the true ones are asked for.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mae_jax.data.augment import denormalize
from mae_jax.models import masking


# How a norm-pix model's predicted patches get their mean and variance back
# (``mae-jax visualize --patch_stats``): estimated from the visible patches, or the
# hidden patches' own (the official notebook's view, which leaks the answer).
PATCH_STATS = ("visible", "true")


def patch_statistics(images: np.ndarray, patch_size: int, tubelet: int = 0,
                     per_channel: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """``(mean, var)`` of every patch, ``[B, L, K]`` (``K`` = 1, or the channels with
  ``per_channel``): the statistics the norm-pix target is normalised by (unbiased
  variance, as the loss)."""
  target = np.asarray(masking.patchify_any(images, patch_size, tubelet), np.float64)
  b, length, dim = target.shape
  if per_channel:
    channels = images.shape[-1]
    target = target.reshape(b, length, dim // channels, channels)
    return target.mean(-2), target.var(-2, ddof=1)
  return target.mean(-1, keepdims=True), target.var(-1, keepdims=True, ddof=1)


def _box_sum(x: np.ndarray, radius: int, axes) -> np.ndarray:
  """Sum of ``x`` over the window ``[i - radius, i + radius]`` (clipped to the array)
  along each of ``axes`` in turn: a box filter, from cumulative sums."""
  for axis in axes:
    n = x.shape[axis]
    c = np.cumsum(x, axis=axis)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    i = np.arange(n)
    x = (np.take(c, np.minimum(i + radius + 1, n), axis=axis) -
         np.take(c, np.maximum(i - radius, 0), axis=axis))
  return x


def neighbourhood_mean(values: np.ndarray, visible: np.ndarray,
                       grid: tuple[int, ...]) -> np.ndarray:
  """``values`` ``[B, L, K]`` of patches on ``grid`` (``(gh, gw)`` or ``(gt, gh, gw)``,
  tokens in row-major order) with ``visible`` ``[B, L]``: a hidden patch gets the mean
  of ``values`` over the visible patches within Chebyshev distance ``r`` of it in the
  grid (space-time for clips), ``r`` the smallest radius that holds one; a visible
  patch keeps its own. A sample with no visible patch at all gets 0 (the dataset's
  mean, in normalised units) for every patch.
  """
  b, length, k = values.shape
  visible = np.asarray(visible, bool)
  shape = (b, *grid)
  axes = tuple(range(1, len(grid) + 1))
  weights = visible.reshape(shape).astype(np.float64)
  weighted = values.reshape(*shape, k) * weights[..., None]
  out = np.where(visible[..., None], values, 0.0).reshape(*shape, k)
  todo = ~visible.reshape(shape) & weights.reshape(b, -1).any(-1).reshape(
      (b,) + (1,) * len(grid))
  radius = 0
  while todo.any():
    radius += 1
    counts = _box_sum(weights, radius, axes)
    found = todo & (counts > 0)
    if found.any():
      sums = _box_sum(weighted, radius, axes)
      out[found] = sums[found] / counts[found][:, None]
      todo &= ~found
  return out.reshape(b, length, k)


def unnormalize_prediction(images: np.ndarray, pred: np.ndarray, patch_size: int,
                           norm_pix_loss: bool, tubelet: int = 0,
                           per_channel: bool = False, *, mask: np.ndarray | None = None,
                           patch_stats: str = "visible") -> np.ndarray:
  """Predicted patches back in the images' (normalised) pixel space.

  With ``norm_pix_loss`` the model predicts each patch normalised by its own mean and
  (unbiased) variance (per channel of the patch for a model trained with
  ``norm_pix_per_channel``), which the picture has to put back:

  * ``patch_stats="visible"`` (default): a hidden patch (``mask`` 1) gets the mean
    and variance averaged over the visible patches around it (``neighbourhood_mean``),
    a visible patch its own: the picture uses only what the model was shown;
  * ``patch_stats="true"``: every patch gets its own statistics, as the official
    visualisation does. For a hidden patch that is part of the answer (its mean
    colour and contrast), so the reconstruction looks better than the model is.
  """
  if not norm_pix_loss:
    return pred
  if patch_stats not in PATCH_STATS:
    raise ValueError(f"patch_stats={patch_stats!r}: choose one of {', '.join(PATCH_STATS)}.")
  mean, var = patch_statistics(images, patch_size, tubelet, per_channel)
  if patch_stats == "visible":
    if mask is None:
      raise ValueError("patch_stats='visible' needs the mask.")
    grid = (masking.clip_grid(images.shape[1:4], patch_size, tubelet) if tubelet else
            masking.grid_size(images.shape[1:3], patch_size))
    visible = np.asarray(mask) < 0.5
    mean = neighbourhood_mean(mean, visible, grid)
    var = neighbourhood_mean(var, visible, grid)
  b, length, dim = pred.shape
  if per_channel:  # VideoMAE's target: (x - mean) / (std + 1e-6) per channel
    k = mean.shape[-1]
    out = (pred.reshape(b, length, dim // k, k) * (np.sqrt(var) + 1e-6)[:, :, None] +
           mean[:, :, None])
    return out.reshape(b, length, dim).astype(np.float32)
  return (pred * np.sqrt(var + 1e-6) + mean).astype(np.float32)


def reconstruction_labels(norm_pix_loss: bool, patch_stats: str = "visible") -> list[str]:
  """Titles of the four columns of ``reconstruction_rows`` (rows of a clip's grid)."""
  how = ""
  if norm_pix_loss:
    how = (" (patch mean/variance estimated from the visible patches)"
           if patch_stats == "visible" else " (uses the hidden patches' statistics)")
  return ["original", "masked", "reconstruction" + how, "reconstruction + visible" + how]


def reconstruction_header(norm_pix_loss: bool, patch_stats: str = "visible",
                          clips: bool = False):
  """``grid_image``'s header for reconstruction rows: a title per column, or for clips
  (a row per kind, a frame per column) one caption naming the rows."""
  labels = reconstruction_labels(norm_pix_loss, patch_stats)
  if not clips:
    return labels
  return "rows of each clip: " + "; ".join(labels) + "; a frame per column"


def reconstruction_rows(images: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                        patch_size: int, norm_pix_loss: bool, mean, std, tubelet: int = 0,
                        per_channel: bool = False, patch_stats: str = "visible") -> np.ndarray:
  """[B, 4, H, W, C] in [0, 1]: original, masked, reconstruction, pasted.

  Clips ``[B, T, H, W, C]`` (``tubelet > 0``) give ``[B * 4, T, H, W, C]``: the four
  rows of each clip, a frame per column. ``patch_stats``: see ``unnormalize_prediction``.
  """
  images = np.asarray(images, np.float32)
  pred = unnormalize_prediction(images, np.asarray(pred, np.float32), patch_size,
                                norm_pix_loss, tubelet, per_channel, mask=mask,
                                patch_stats=patch_stats)
  if tubelet:
    grid = masking.clip_grid(images.shape[1:4], patch_size, tubelet)
  else:
    grid = masking.grid_size(images.shape[1:3], patch_size)
  channels = images.shape[-1]
  recon = np.asarray(masking.unpatchify_any(pred, patch_size, tubelet, grid, channels))
  pixel_mask = np.asarray(masking.unpatchify_any(
      np.repeat(np.asarray(mask, np.float32)[..., None], pred.shape[-1], -1),
      patch_size, tubelet, grid, channels))
  show = lambda x: denormalize(x, mean, std)
  masked = show(images) * (1 - pixel_mask) + 0.5 * pixel_mask
  pasted = show(images) * (1 - pixel_mask) + show(recon) * pixel_mask
  rows = np.stack([show(images), masked, show(recon), pasted], axis=1)
  return rows.reshape((-1,) + rows.shape[2:]) if tubelet else rows


TARGET_WORDS = {"hog": "HOG features (MaskFeat)", "teacher": "an EMA teacher's features"}


def target_labels(target: str) -> list[str]:
  """Column titles of ``masked_rows`` for a model whose target is not pixels."""
  return ["original", f"masked; the model predicts {TARGET_WORDS.get(target, target)} of "
          "the hidden patches, not pixels: no reconstruction to draw"]


def target_header(target: str, clips: bool = False):
  labels = target_labels(target)
  return labels if not clips else "rows of each clip: " + "; ".join(labels)


def masked_rows(images: np.ndarray, mask: np.ndarray, patch_size: int, mean, std,
                tubelet: int = 0) -> np.ndarray:
  """[B, 2, H, W, C] in [0, 1]: the original and its visible patches (hidden ones grey),
  for a model whose predictions are not pixels (``model.target`` hog / teacher).
  Clips give ``[B * 2, T, H, W, C]`` as ``reconstruction_rows``."""
  images = np.asarray(images, np.float32)
  channels = images.shape[-1]
  if tubelet:
    grid = masking.clip_grid(images.shape[1:4], patch_size, tubelet)
  else:
    grid = masking.grid_size(images.shape[1:3], patch_size)
  dim = patch_size ** 2 * channels * max(tubelet, 1)
  pixel_mask = np.asarray(masking.unpatchify_any(
      np.repeat(np.asarray(mask, np.float32)[..., None], dim, -1),
      patch_size, tubelet, grid, channels))
  shown = denormalize(images, mean, std)
  rows = np.stack([shown, shown * (1 - pixel_mask) + 0.5 * pixel_mask], axis=1)
  return rows.reshape((-1,) + rows.shape[2:]) if tubelet else rows


def grid_image(rows: np.ndarray, scale: int = 1, pad: int = 2, header=None) -> np.ndarray:
  """[B, K, H, W, C] floats in [0, 1] -> one uint8 RGB image, a row per example.

  ``header``: a title per column (a list of K strings) or one caption (a string),
  written in black above the tiles, wrapped to the column (or image) width."""
  b, k, h, w, c = rows.shape
  tiles = np.ones((b * (h + pad) + pad, k * (w + pad) + pad, 3), np.float32)
  for i in range(b):
    for j in range(k):
      tile = rows[i, j]
      tile = np.repeat(tile, 3, -1) if c == 1 else tile[..., :3]
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      tiles[y:y + h, x:x + w] = tile
  out = (tiles * 255).round().astype(np.uint8)
  if scale > 1:
    out = np.repeat(np.repeat(out, scale, 0), scale, 1)
  if header is not None:
    out = _with_header(out, header, (w + pad) * scale, pad * scale)
  return out


def _wrap(draw, text: str, font, width: int) -> list[str]:
  lines, line = [], ""
  for word in text.split():
    candidate = f"{line} {word}".strip()
    if line and draw.textlength(candidate, font=font) > width:
      lines.append(line)
      candidate = word
    line = candidate
  return lines + [line] if line else lines


def _with_header(image: np.ndarray, header, column: int, pad: int) -> np.ndarray:
  from PIL import ImageDraw, ImageFont
  font = ImageFont.load_default()
  draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  if isinstance(header, str):
    blocks = [(pad, _wrap(draw, header, font, image.shape[1] - 2 * pad))]
  else:
    blocks = [(pad + j * column, _wrap(draw, title, font, column - pad))
              for j, title in enumerate(header)]
  line_height = font.getbbox("Ay")[3] + 2
  height = max(len(lines) for _, lines in blocks) * line_height + 2 * pad
  canvas = Image.new("RGB", (image.shape[1], height + image.shape[0]), "white")
  canvas.paste(Image.fromarray(image), (0, height))
  draw = ImageDraw.Draw(canvas)
  for x, lines in blocks:
    for n, line in enumerate(lines):
      draw.text((x, pad + n * line_height), line, fill="black", font=font)
  return np.asarray(canvas)


def load_images(paths, size, channels: int) -> np.ndarray:
  """Image files (local or ``gs://``; JPEG, PNG, ...; ``.npy`` or multi-band TIFF
  arrays for other channel counts) as ``[N, H, W, channels]`` (``size``: an int or
  ``(H, W)``): resized to cover ``size`` (bicubic), then centre-cropped."""
  from mae_jax import fileio
  from mae_jax.data import arrays, augment, sources
  from mae_jax.errors import CorruptImageError, DataError
  out = []
  for path in paths:
    if not fileio.exists(path):
      raise DataError(f"--images: {path} does not exist.")
    try:
      if channels not in (1, 3) or str(path).lower().endswith(".npy"):
        image = augment.match_channels(arrays.read_array(path, channels), channels)
      else:
        image = sources.read_image(path, channels)
    except CorruptImageError as e:
      raise DataError(f"--images: {e.what} is not an image that can be decoded.") from None
    out.append(augment.center_crop(image, size, crop_pct=1.0))
  return np.stack(out)


def save_png(image: np.ndarray | Image.Image, path: str) -> None:
  """Writes a uint8 [H, W, C] array or a PIL image as PNG (local or ``gs://``)."""
  from mae_jax import fileio
  buffer = io.BytesIO()
  (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer,
                                                                            format="PNG")
  fileio.write_bytes(path, buffer.getvalue())


def default_scale(size) -> int:
  """The pixel repeat of a grid of ``size`` images (an int or ``(height, width)``)."""
  height = size[0] if isinstance(size, (tuple, list)) else size
  return max(1, 112 // height)


def default_bands(channels: int) -> tuple[int, ...] | None:
  """The bands a grid shows: all of a grey or RGB image (None), else the first three
  (the first alone for two channels)."""
  if channels in (1, 3):
    return None
  return (0, 1, 2) if channels >= 3 else (0,)


def parse_bands(text: str, channels: int) -> tuple[int, ...]:
  """``"3,2,1"`` -> (3, 2, 1): three band indices (from 0) for a colour composite, or
  one for a grey image; a ``ValueError`` naming the problem."""
  try:
    bands = tuple(int(b) for b in text.split(","))
  except ValueError:
    raise ValueError(f"--bands={text} must be band indices such as 3,2,1") from None
  if len(bands) not in (1, 3):
    raise ValueError(f"--bands={text} names {len(bands)} bands; give 3 (red, green, blue) "
                     "or 1 (grey)")
  bad = [b for b in bands if not 0 <= b < channels]
  if bad:
    raise ValueError(f"--bands={text}: band {bad[0]} does not exist; the model's images "
                     f"have bands 0 to {channels - 1}")
  return bands


def stretch(x: np.ndarray, reference: np.ndarray, low: float = 1.0,
            high: float = 99.0) -> np.ndarray:
  """Each channel of ``x`` mapped to [0, 1] between the ``low`` and ``high``
  percentiles of that channel in ``reference`` (the usual display of sensor bands,
  whose values fill a small part of their type's range)."""
  flat = reference.reshape(-1, reference.shape[-1])
  lo, hi = np.percentile(flat, low, axis=0), np.percentile(flat, high, axis=0)
  return np.clip((x - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)


def display_rows(rows: np.ndarray, bands=None, all_bands: bool = False) -> np.ndarray:
  """Reconstruction rows ``[B, K, H, W, C]`` (``reconstruction_rows``) for
  ``grid_image``: grey or RGB images as they are; other channel counts (or chosen
  ``bands``) as a composite of three bands (or one, grey), each band stretched by
  its percentiles in the originals' column (``stretch``). ``all_bands``: after each
  composite row, one grey row per band."""
  channels = rows.shape[-1]
  if bands is None:
    bands = default_bands(channels)
  if bands is None and not all_bands:
    return rows
  shown = stretch(rows, rows[:, 0])
  if rows.shape[1] > 1:  # the masked column's grey fill stays mid-grey
    hidden = np.any(rows[:, 1] != rows[:, 0], axis=-1)
    shown[:, 1][hidden] = 0.5
  out = []
  for example in shown:
    picked = example if bands is None else example[..., list(bands)]
    out.append(np.repeat(picked, 3, -1) if picked.shape[-1] == 1 else picked)
    if all_bands:
      out += [np.repeat(example[..., [c]], 3, -1) for c in range(channels)]
  return np.stack(out)
