"""Clips from video files: a folder per class or VideoMAE's list files.

* ``data.source=video_folder``: ``DATA_DIR/<split>/<class>/<file>`` (``.mp4 .webm
  .avi .mkv .mov``, any case, nested folders included), the classes, labels and
  order of the image folders (``sources.VideoFolderSource``, a ``FolderSource``);
* ``data.source=video_list``: VideoMAE's list file ``DATA_DIR/<split>.csv`` (or
  ``.txt``), one ``path label`` line per video (space- or comma-separated, the
  label an integer), the path relative to the list file's folder or absolute.

Files and lists may be local or on ``gs://`` (``mae_jax.fileio``; a remote video is
read through a seekable file object, so only the bytes a clip needs are fetched).

Clips are taken exactly as from a TFDS video (``mae_jax.data.video``: the same
``Clip`` class, ``clip_indices``, random window in training, centred window in
evaluation, short videos repeating their last frame), so they go through the same
deterministic, resumable, process-count independent grain pipeline.

Decoding is PyAV's (FFmpeg's libraries, imported here only, when a video is
opened): maintained, wheels on PyPI with FFmpeg inside for Linux, macOS and Windows
(no system ffmpeg), and it seeks. decord, VideoMAE's loader, has not had a release
since 0.6.0 (2021). A video is opened once per clip: the frame count and the
position of every frame and key frame come from its packets (no decoding); then
the decoder seeks to the key frame before the first frame of the clip, decodes
forward and converts only the clip's frames to RGB, seeking again wherever a key
frame lies between two frames of the clip. So only the clip's frames and the
frames a codec needs to reach them are decoded.
"""
from __future__ import annotations

import re

import numpy as np

from mae_jax import fileio
from mae_jax.data import video
from mae_jax.data.decode import image_mode
from mae_jax.data.jpeg import SKIP_HINT
from mae_jax.data.stats import default_stats
from mae_jax.errors import ConfigError, CorruptImageError, DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
LIST_SUFFIXES = (".csv", ".txt")


def _av():
  try:
    import av
  except ImportError:
    raise ConfigError("data.source=video_folder / video_list decode videos with PyAV, "
                      "which is not installed: pip install av (or "
                      "pip install 'mae_jax[video]').") from None
  return av


def _corrupt(path: str, reason: str) -> CorruptImageError:
  return CorruptImageError(f"{path} cannot be decoded as a video ({reason}). {SKIP_HINT}",
                           what=f"{path} ({reason})")


class VideoFile:
  """The frames of one video file: ``len()`` frames (from its packets, nothing
  decoded), ``decode(indices)`` the frames asked for. Frame ``i`` is the one with
  the ``i``-th smallest presentation timestamp."""

  def __init__(self, path: str, channels: int = 3):
    self.path, self.channels = str(path), int(channels)
    self._file = self._container = None
    self.frames_decoded = 0   # frames out of the decoder so far, needed or not
    self._open()

  def _open(self) -> None:
    """Opens the file and reads the timestamps of its frames and key frames."""
    av = _av()
    try:
      if fileio.is_remote(self.path):
        self._file = fileio.open(self.path, "rb")
      self._container = av.open(self._file or self.path)
      if not self._container.streams.video:
        raise _corrupt(self.path, "no video stream")
      self._stream = self._container.streams.video[0]
      self._stream.thread_count = 1   # the input pipeline's threads are the parallelism
      pts, keys = [], []
      for packet in self._container.demux(self._stream):
        t = packet.pts if packet.pts is not None else packet.dts
        if t is None or packet.size == 0:
          continue
        pts.append(t)
        if packet.is_keyframe:
          keys.append(t)
    except CorruptImageError:
      self.close()
      raise
    except FileNotFoundError:
      self.close()
      raise _corrupt(self.path, "no such file") from None
    except Exception as e:  # noqa: BLE001  (FFmpeg's errors: say which file)
      self.close()
      raise _corrupt(self.path, str(e).splitlines()[0] if str(e) else repr(e)) from None
    self.pts = np.sort(np.asarray(pts, np.int64))
    self.keyframes = np.sort(np.asarray(keys, np.int64))

  def __len__(self) -> int:
    return len(self.pts)

  def close(self) -> None:
    for thing in (self._container, self._file):
      if thing is not None:
        thing.close()
    self._container = self._file = None

  def _array(self, frame) -> np.ndarray:
    if self.channels == 1:
      return frame.to_ndarray(format="gray")[..., None]
    return frame.to_ndarray(format="rgb24")

  def _keyframe_before(self, t: int) -> int:
    i = int(np.searchsorted(self.keyframes, t, side="right")) - 1
    return int(self.keyframes[i]) if i >= 0 else int(self.pts[0])

  def decode(self, indices) -> dict:
    """``{i: uint8 [H, W, C]}`` for the frame indices ``indices``; then closed."""
    if self._container is None:   # decoded once already: open again
      self._open()
    wanted = {int(self.pts[i]): int(i) for i in indices}
    out = {}
    try:
      frames, position = None, None
      for target in sorted(wanted):
        if wanted[target] in out:
          continue
        if frames is None or position is None or self._keyframe_before(target) > position:
          self._container.seek(int(target), stream=self._stream, backward=True,
                               any_frame=False)
          frames, position = self._container.decode(self._stream), None
        for frame in frames:
          self.frames_decoded += 1
          position = frame.pts
          if position in wanted and wanted[position] not in out:
            out[wanted[position]] = self._array(frame)
          if position is None or position >= target:
            break
      if len(out) < len(wanted):   # timestamps the decoder does not report as muxed
        out = self._decode_in_order(set(wanted.values()))
    except CorruptImageError:
      raise
    except Exception as e:  # noqa: BLE001
      raise _corrupt(self.path, str(e).splitlines()[0] if str(e) else repr(e)) from None
    finally:
      self.close()
    return out

  def _decode_in_order(self, indices: set) -> dict:
    """The slow, sure way: every frame from the start, numbered in output order."""
    self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
    out = {}
    for i, frame in enumerate(self._container.decode(self._stream)):
      self.frames_decoded += 1
      if i in indices:
        out[i] = self._array(frame)
      if len(out) == len(indices):
        return out
    missing = sorted(indices - set(out))
    raise _corrupt(self.path, f"frame {missing[0]} of {len(self)} could not be decoded")


class FileClip(video.Clip):
  """A ``video.Clip`` whose frames are a ``VideoFile``: the window's frames are
  decoded from the file."""

  def decode_frames(self, indices: list[int]) -> dict:
    return self.frames.decode(indices)


def video_settings(data_config, source: str) -> tuple[int, int]:
  """``(num_frames, stride)`` of ``data.video``; a ConfigError without the section."""
  if "video" not in data_config:
    raise ConfigError(f"data.source={source} reads clips: the config needs a data.video "
                      "section (num_frames, stride), as configs/pretrain_video_kinetics.py "
                      "has (config_lib.video_defaults adds it).")
  num_frames = int(data_config.video.num_frames)
  stride = int(data_config.video.get("stride", 1))
  if num_frames < 1 or stride < 1:
    raise ConfigError(f"data.video.num_frames={num_frames} and data.video.stride={stride} "
                      "must be at least 1.")
  return num_frames, stride


def open_clip(path: str, num_frames: int, stride: int, channels: int) -> FileClip:
  """The clip of the video file at ``path`` (opened, its frames counted)."""
  return FileClip(VideoFile(path, channels), num_frames, stride, channels, path)


def list_file(data_dir: str, split: str) -> str:
  """``DATA_DIR/<split>.csv`` or ``.txt``, whichever exists (csv first)."""
  for suffix in LIST_SUFFIXES:
    candidate = fileio.join(data_dir, split + suffix)
    if fileio.exists(candidate):
      return candidate
  raise DataError(f"data.source=video_list reads DATA_DIR/<split>.csv (or .txt), a "
                  f"'path label' line per video; neither {fileio.join(data_dir, split)}.csv "
                  "nor .txt exists. Set --config.data.data_dir to the folder of the list "
                  "files and data.split / data.eval_split to their names (e.g. train, val).")


_LINE = re.compile(r"^(?P<path>.*?\S)[\s,]+(?P<label>-?\d+)$")


def read_list(path: str) -> list[tuple[str, int]]:
  """``[(video path, label)]`` of a list file; relative paths are taken from the list
  file's folder. Blank lines and lines starting with ``#`` are skipped."""
  folder = fileio.dirname(path)
  samples = []
  for number, line in enumerate(fileio.read_text(path).splitlines(), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    match = _LINE.match(line)
    if match is None:
      raise DataError(f"{path}, line {number}: {line[:120]!r} is not 'path label' (a video "
                      "path, a space or comma, an integer label).")
    video_path = match["path"]
    if not (fileio.is_remote(video_path) or video_path.startswith("/")):
      video_path = fileio.join(folder, video_path)
    samples.append((video_path, int(match["label"])))
  if not samples:
    raise DataError(f"{path} lists no videos; write a 'path label' line per video.")
  return samples


class VideoListSource:
  """The videos of VideoMAE's list file ``DATA_DIR/<split>.csv`` (``read_list``), in
  the file's order; ``num_classes`` is the largest label + 1."""

  def __init__(self, data_config, split: str):
    self.num_frames, self.stride = video_settings(data_config, "video_list")
    if not data_config.data_dir:
      raise ConfigError("data.source=video_list needs --config.data.data_dir=DIR with "
                        "the list files DIR/<split>.csv ('path label' lines; e.g. "
                        "DIR/train.csv, DIR/val.csv).")
    self.name = list_file(data_config.data_dir, split)
    self.samples = read_list(self.name)
    self.num_classes = max(label for _, label in self.samples) + 1
    self.channels = int(data_config.channels)
    image_mode(self.channels)
    self.mean, self.std = default_stats("", self.channels)

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict:
    path, label = self.samples[index]
    return {"image": open_clip(path, self.num_frames, self.stride, self.channels),
            "label": label}
