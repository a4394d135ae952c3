"""Clips from TFDS video datasets: which frames a clip takes, and the source. Video
files (``data.source=video_folder`` / ``video_list``, ``mae_jax.data.video_files``)
take their clips with the same functions.

A dataset whose examples hold a ``tfds.features.Video`` (frames ``[N, H, W, C]``
uint8 stored as PNG or JPEG images, e.g. ``ucf101``: keys ``video`` and ``label``)
is read through ``builder.as_data_source`` (ArrayRecord) like every other TFDS
dataset, so clips go through the same deterministic, resumable grain pipeline as
images (``mae_jax.data.pipeline``). A record's frames stay encoded until a clip is
chosen: only the ``data.video.num_frames`` frames of the clip are decoded.

Temporal sampling (``clip_indices``): frames ``start + stride * k`` for ``k < num_frames``.

* training: ``start`` uniform over the windows that fit in the video, drawn from
  the record's ``np.random.Generator`` before the crop box and the flip, so it is a
  pure function of ``(seed, position in the stream)`` as the rest of the
  augmentation (and a different window every epoch);
* evaluation (``np.asarray(clip)``): the centred window.

A video shorter than ``(num_frames - 1) * stride + 1`` frames starts at frame 0 and
repeats its last frame: the indices are clamped to the video, as MAE-ST's
``temporal_sampling`` (SlowFast's loader, ``torch.clamp`` of the indices) does and
as VideoMAE's loader, which pads with the last frame.

Spatial augmentation is the image one (``augment.random_resized_crop`` on a
``[T, H, W, C]`` clip): one crop box and one flip for every frame of a clip, the
same function the moving Fashion-MNIST clips go through.
"""
from __future__ import annotations

import functools

import numpy as np

from mae_jax.data import augment
from mae_jax.data.decode import decode_image
from mae_jax.data.stats import default_stats
from mae_jax.data.tfds_split import open_tfds
from mae_jax.errors import ConfigError, CorruptImageError, DataError


def num_windows(num_available: int, num_frames: int, stride: int) -> int:
  """How many start frames give a whole clip (at least 1: a short video has one)."""
  return max(num_available - (num_frames - 1) * stride, 1)


def clip_indices(num_available: int, num_frames: int, stride: int, start: int) -> np.ndarray:
  """Frame indices ``start + stride * k`` (``k < num_frames``), clamped to the video."""
  return np.minimum(start + stride * np.arange(num_frames), num_available - 1)


def random_start(rng: np.random.Generator, num_available: int, num_frames: int,
                 stride: int) -> int:
  """A training clip's first frame, uniform over the whole windows."""
  return int(rng.integers(num_windows(num_available, num_frames, stride)))


def centre_start(num_available: int, num_frames: int, stride: int) -> int:
  """The evaluation clip's first frame: the centred window."""
  return (num_windows(num_available, num_frames, stride) - 1) // 2


class Clip:
  """The frames of one video record, still encoded; the augmentation picks the
  window and decodes only its frames.

  ``augment.random_resized_crop`` calls ``random_resized_crop`` (training: random
  window, then the crop and flip of every frame); ``np.asarray(clip)`` is the
  centred window, uint8 ``[num_frames, H, W, C]`` (evaluation).
  """

  def __init__(self, frames, num_frames: int, stride: int, channels: int, where: str):
    self.frames = frames  # encoded images (bytes), or an array [N, H, W, C]
    self.num_frames, self.stride, self.channels = num_frames, stride, channels
    self.where = where
    if len(frames) == 0:
      raise CorruptImageError(f"{where} has no frames.", what=f"{where} (no frames)")

  def window(self, start: int) -> np.ndarray:
    """uint8 ``[num_frames, H, W, C]``: the clip starting at frame ``start``."""
    indices = clip_indices(len(self.frames), self.num_frames, self.stride, start)
    decoded = self.decode_frames(sorted(set(indices.tolist())))
    return np.stack([decoded[i] for i in indices.tolist()])

  def decode_frames(self, indices: list[int]) -> dict:
    """``{index: uint8 [H, W, C]}`` of the (ascending, distinct) frames ``indices``; a
    source whose frames are not a sequence of images (a video file) overrides it."""
    decoded = {}
    for i in indices:
      frame = self.frames[i]
      if isinstance(frame, (bytes, np.bytes_)):
        frame = decode_image(frame, self.channels, f"{self.where}, frame {i}")
      decoded[i] = frame
    return decoded

  def random_resized_crop(self, rng, size, scale, ratio, sampler, backend, hflip):
    start = random_start(rng, len(self.frames), self.num_frames, self.stride)
    return augment.random_resized_crop(self.window(start), rng, size, scale, ratio,
                                       sampler, backend, hflip)

  def __array__(self, dtype=None, copy=None):
    del copy  # always a new array
    clip = self.window(centre_start(len(self.frames), self.num_frames, self.stride))
    return clip if dtype is None else clip.astype(dtype)


@functools.cache
def _raw_frames_decoder():
  """A TFDS decoder that leaves a video's frames encoded (``SkipDecoding`` cannot
  skip a ``Sequence`` in ``as_data_source``)."""
  import tensorflow_datasets as tfds

  class RawFrames(tfds.decode.Decoder):
    def decode_example(self, serialized):
      return serialized

    def decode_example_np(self, serialized):
      return serialized

    def decode_batch_example_np(self, serialized):
      return serialized

  return RawFrames()


def _is_video(feature) -> bool:
  import tensorflow_datasets as tfds
  return (isinstance(feature, tfds.features.Sequence) and
          isinstance(feature.feature, tfds.features.Image))


class TfdsVideoSource:
  """Clips ``{"image": Clip, "label": int}`` of a TFDS dataset with a video feature.

  ``data.video``: ``video_key`` (the ``tfds.features.Video`` feature, default
  ``video``), ``label_key`` (default ``label``; -1 where the dataset has none),
  ``num_frames`` and ``stride``.
  """

  def __init__(self, data_config, split: str):
    video = data_config.video
    self.name = data_config.name
    key = video.get("video_key", "video")
    self.label_key = video.get("label_key", "label")
    self.num_frames, self.stride = int(video.num_frames), int(video.get("stride", 1))
    if self.num_frames < 1 or self.stride < 1:
      raise ConfigError(f"data.video.num_frames={self.num_frames} and data.video.stride="
                        f"{self.stride} must be at least 1.")
    info, self._source = open_tfds(self.name, split, data_config.data_dir,
                                   bool(data_config.download),
                                   lambda info: self._decoders(info, key))
    self.key = key
    shape = info.features[key].shape  # (None, H, W, C)
    self.channels = shape[-1] if shape[-1] else 3
    size = int(data_config.image_size)
    if None not in shape[1:3] and min(shape[1:3]) < size:
      raise DataError(f"{self.name}: frames are {shape[1]}x{shape[2]} pixels, smaller than "
                      f"data.image_size={size}; set --config.data.image_size="
                      f"{min(shape[1:3])} or less, or prepare the videos at a higher "
                      "resolution.")
    label = info.features[self.label_key] if self.label_key in info.features else None
    self.num_classes = getattr(label, "num_classes", 0) or 0
    self.mean, self.std = default_stats(self.name, self.channels)

  def _decoders(self, info, key: str) -> dict:
    features = info.features
    if key not in features or not _is_video(features[key]):
      videos = [k for k in features if _is_video(features[k])]
      what = "a feature" if key not in features else "a video feature"
      hint = (f"set --config.data.video.video_key={videos[0]}" if videos else
              "it holds no tfds.features.Video feature")
      raise DataError(f"data.video.video_key={key!r} is not {what} of TFDS dataset "
                      f"{self.name!r} (its features: {', '.join(sorted(features))}); {hint}.")
    return {key: _raw_frames_decoder()}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    clip = Clip(record[self.key], self.num_frames, self.stride, self.channels,
                f"{self.name}: record {index}")
    return {"image": clip, "label": int(record.get(self.label_key, -1))}
