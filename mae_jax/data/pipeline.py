"""Deterministic, resumable input pipelines on grain.

Why grain over a random-access source rather than tf.data: a ``MapDataset`` is
indexed, so batch ``k`` of a seed is a pure function of ``(seed, k)``; the
iterator state is one integer (saved in every checkpoint through grain's Orbax
handler), and a resumed run reads exactly the batches an uninterrupted run
would have. tf.data's shuffle buffer and parallel map are neither. The measured
cost (ImageNet-like JPEGs, per core, against PIL and tf.data) is in
``benchmarks/input_pipeline.py``: within 20% of tf.data, level on large photos.

The global batch does not depend on the number of processes: global batch ``k``
is elements ``[k*B, (k+1)*B)`` of one shuffled, augmented stream over the whole
dataset, and each process reads (and augments) only the rows of it that its
devices hold (``rows``; by default the contiguous block ``process_index`` of
``process_count``). The training loop assembles the global batch with
``jax.make_array_from_process_local_data``. So one process with 8 devices and
two processes with 4 each train on the same images, and the iterator state (the
number of global batches read) means the same in both.

With ``data.repeated_sampling = R`` (MAE-ST's ``repeat_aug``, DeiT's repeated
augmentation) every example of the shuffled stream is read ``R`` times in a row,
each copy with its own augmentation (for a clip: its own window, crop and flip); the
copies count toward the batch, and an epoch (``config_lib.steps_per_epoch``) is one
pass over the examples, ``R`` times as many batches.

Every task reads through ``train_iterator``; what differs between tasks is the
per-record augmentation, passed in as a transform factory (``train_transform`` for
pretraining and the linear probe, ``finetune_augment.train_transform`` for
fine-tuning). Evaluation batches (``eval_batches``) follow the same rule: global
batch ``k`` is examples ``[k*B, (k+1)*B)`` of the split in order, padded.

Batches hold the source's pixels (uint8 photos; uint16 or float32 arrays travel as
they are): the trainer normalises them inside the jitted step
(``mae_jax.train.step.to_model_input``), so a step moves a quarter (uint16: half)
of the bytes of float32 to the device. ``eval_arrays`` (whole arrays for grids and
probes) returns normalised floats.

Normalisation statistics: ``data.mean/std`` when given, else the source's own
(ImageNet's for RGB photos), else, for data without known statistics (a source
whose ``mean`` is None: multispectral bands, 16-bit sensors), the per-channel
statistics of the training split (``arrays.channel_stats``). ``resolve_stats``
writes those into the config before a run saves its ``config.json``, so every
later task and ``visualize`` use the same values.

An image that cannot be decoded stops the run with a ``CorruptImageError`` naming
it; with ``data.skip_corrupt`` it is logged, counted and replaced in training by
the next decodable record of the source (a pure function of the index, so runs
stay deterministic and resumable), and left out of evaluation.
"""
from __future__ import annotations

import functools
import logging
import sys
import threading
import types

import grain
import numpy as np

from mae_jax.data import arrays, augment
from mae_jax.data.sources import open_source
from mae_jax.data.stats import default_stats
from mae_jax.errors import ConfigError, CorruptImageError, DataError
from mae_jax.sizes import image_hw


_COMPUTED_STATS: dict = {}


def computed_stats(data_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel statistics of ``data.split`` (``arrays.channel_stats``), computed once
  per process for a dataset."""
  key = (data_config.source, data_config.name, data_config.data_dir, data_config.split,
         int(data_config.channels), data_config.get("image_key", "image"))
  if key not in _COMPUTED_STATS:
    source = open_source(data_config, data_config.split)
    logging.info("computing data.mean/std from up to %d images of %s",
                 arrays.STATS_MAX_IMAGES, source.name)
    _COMPUTED_STATS[key] = arrays.channel_stats(source)
    logging.info("data.mean=%s data.std=%s", *_COMPUTED_STATS[key])
  return _COMPUTED_STATS[key]


def resolve_stats(data_config) -> bool:
  """Sets ``data.mean/std`` to the training split's statistics when the config gives
  none and the data have no known ones; True when it did."""
  if data_config.mean or "video" in data_config:
    return False
  source = open_source(data_config, data_config.split)
  if source.mean is not None:
    return False
  mean, std = computed_stats(data_config)
  with data_config.unlocked(), data_config.ignore_type():
    data_config.mean, data_config.std = mean, std
  return True


def pixel_dtype(data_config, dataset_required: bool = True) -> np.dtype:
  """The pixel type of the data's batches (uint8 when the dataset is not available
  and ``dataset_required`` is False)."""
  try:
    return np.dtype(getattr(open_source(data_config, data_config.split), "dtype", np.uint8))
  except DataError:
    if dataset_required:
      raise
    return np.dtype(np.uint8)


def normalization_stats(source, data_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  if not data_config.mean and source.mean is None:
    mean, std = computed_stats(data_config)
  else:
    mean = tuple(data_config.mean) if data_config.mean else tuple(source.mean)
    std = tuple(data_config.std) if data_config.std else tuple(source.std)
  channels = data_config.channels
  if len(mean) == 1 and channels > 1:
    mean, std = mean * channels, std * channels
  if len(mean) != channels or len(std) != channels:
    raise ConfigError(f"data.mean/std have {len(mean)}/{len(std)} values for "
                      f"{channels} channels.")
  return mean, std


def check_channels(source, channels: int):
  if source.channels != channels and source.channels != 1:
    raise ConfigError(f"data.channels={channels} but {source.name} images have "
                      f"{source.channels} channels; set --config.data.channels="
                      f"{source.channels}.")


def _read(source, index: int) -> dict:
  try:
    return source[index]
  except DataError:
    raise
  except Exception as e:  # a corrupt record: say which one
    what = f"{source.name}: record {index} ({str(e).splitlines()[0] if str(e) else e!r})"
    raise CorruptImageError(f"{what} cannot be read or decoded.", what=what) from None


class Records:
  """Reads records of a source and applies a transform; every error names the image.

  With ``skip_corrupt`` an image that cannot be decoded is logged and counted
  (``skipped``) instead of stopping the run.
  """

  def __init__(self, source, skip_corrupt: bool = False):
    self.source = source
    self.skip_corrupt = bool(skip_corrupt)
    self.skipped = 0
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  def _skip(self, error: CorruptImageError) -> None:
    if not self.skip_corrupt:
      raise error
    with self._lock:
      self.skipped += 1
      count = self.skipped
    logging.warning("skipped undecodable image %s (%d skipped so far in this process)",
                    error.what, count)

  def get(self, index: int, fn, *args):
    """``fn(record, *args)`` of record ``index``, or None if it is corrupt and skipped."""
    try:
      return fn(_read(self.source, index), *args)
    except CorruptImageError as e:
      self._skip(e)
      return None

  def get_or_next(self, index: int, fn, *args):
    """``fn(record, *args)`` of record ``index`` or, skipping corrupt ones, of the next
    decodable record (wrapping around)."""
    n = len(self.source)
    for offset in range(n):
      out = self.get((index + offset) % n, fn, *args)
      if out is not None:
        return out
    raise DataError(f"{self.source.name}: none of its {n} images can be decoded.")


def _crop_flip(record: dict, rng: np.random.Generator, *, size, channels, hflip,
               **rrc) -> dict:
  image = augment.crop_flip(record["image"], rng, size, channels, hflip, **rrc)
  return {"image": image, "label": np.int32(record["label"])}


def train_transform(data_config, mean, std):
  """RandomResizedCrop + flip (uint8 out): pretraining and the linear probe."""
  del mean, std  # normalised on the device
  return functools.partial(
      _crop_flip, size=data_config.image_size, channels=data_config.channels,
      hflip=data_config.augment.hflip, **augment.rrc_options(data_config.augment))


def _eval_transform(record: dict, *, size, channels, crop_pct=0.875) -> dict:
  image = augment.center_crop(record["image"], size, crop_pct)
  image = augment.match_channels(image, channels)
  return {"image": image, "label": np.int32(record["label"])}


def example_shape(data_config) -> tuple[int, ...]:
  """Shape of one transformed example: ``(H, W, C)``, or ``(T, H, W, C)`` for a clip
  dataset (a ``data.video`` section)."""
  frames = (int(data_config.video.num_frames),) if "video" in data_config else ()
  return frames + image_hw(data_config.image_size) + (int(data_config.channels),)


def stack_records(records):
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ConfigError(f"batch_size={global_batch} is not divisible by the number of "
                      f"processes ({process_count}).")
  return global_batch // process_count


def process_rows(global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> tuple[int, ...]:
  """Rows of each global batch read by a process: its contiguous block."""
  per_process = local_batch_size(global_batch, process_count)
  return tuple(range(process_index * per_process, (process_index + 1) * per_process))


class _GlobalBatchRows(grain.MapDataset):
  """Element ``i`` is row ``rows[i % len(rows)]`` of global batch ``i // len(rows)``.

  The parent is the global element stream; only the selected rows are read and
  transformed.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, global_batch: int, rows):
    super().__init__(parent)
    self._global_batch = int(global_batch)
    self._rows = tuple(int(r) for r in rows)
    self._length = (len(parent) // self._global_batch) * len(self._rows)

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    batch, row = divmod(index, len(self._rows))
    return batch * self._global_batch + self._rows[row]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._parent_index(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f"GlobalBatchRows(global_batch={self._global_batch}, rows={len(self._rows)})"


class _RepeatEach(grain.MapDataset):
  """Element ``i`` is element ``i // repeats`` of the parent: every element ``repeats``
  times in a row (repeated sampling; ``random_map`` after it draws a new RNG for each)."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, repeats: int):
    super().__init__(parent)
    self._repeats = int(repeats)

  def __len__(self) -> int:
    return min(len(self._parent) * self._repeats, sys.maxsize)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[index // self._repeats]

  def __str__(self) -> str:
    return f"RepeatEach(repeats={self._repeats})"


def repeated_sampling(data_config, global_batch: int | None = None) -> int:
  """``data.repeated_sampling`` (1 without the key), checked against the batch size."""
  repeats = data_config.get("repeated_sampling", 1)
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ConfigError(f"data.repeated_sampling={repeats!r} must be an integer >= 1.")
  if global_batch is not None and global_batch % repeats:
    raise ConfigError(f"batch_size={global_batch} is not a multiple of "
                      f"data.repeated_sampling={repeats}: the copies of a clip share a "
                      "batch.")
  return repeats


def _checked_rows(rows, global_batch: int) -> tuple[int, ...]:
  rows = tuple(int(r) for r in rows)
  if not rows or list(rows) != sorted(set(rows)) or rows[0] < 0 or rows[-1] >= global_batch:
    raise ConfigError(f"rows must be distinct ascending indices in [0, {global_batch}), "
                      f"got {len(rows)} rows from {rows[:1]} to {rows[-1:]}.")
  return rows


def open_checked(data_config, split: str):
  """``(source, mean, std)`` of a split, with the channel count checked."""
  source = open_source(data_config, split)
  check_channels(source, data_config.channels)
  mean, std = normalization_stats(source, data_config)
  return source, mean, std


def train_dataset(data_config, *, global_batch: int, seed: int, process_index: int = 0,
                  process_count: int = 1, split: str | None = None, rows=None,
                  transform=train_transform):
  """Infinite, shuffled (reshuffled per epoch), augmented, batched ``MapDataset``.

  Returns ``(dataset, source)``; ``dataset[k]`` is this process's part of global
  batch ``k``: the rows ``rows`` (ascending indices into the global batch, e.g. from
  ``mae_jax.parallel.sharding.process_batch_rows``), by default
  ``process_rows(global_batch, process_index, process_count)``. ``transform``
  is ``transform(data_config, mean, std) -> fn(record, rng) -> example``.
  """
  source, mean, std = open_checked(data_config, split or data_config.split)
  if rows is None:
    rows = process_rows(global_batch, process_index, process_count)
  rows = _checked_rows(rows, global_batch)
  if len(source) < global_batch:
    raise DataError(f"{source.name} has {len(source)} examples, fewer than one batch of "
                    f"{global_batch}.")
  repeats = repeated_sampling(data_config, global_batch)
  records = Records(source, data_config.get("skip_corrupt", False))
  fn = transform(data_config, mean, std)
  # the global stream: shuffled indices (each `repeats` times in a row), each read and
  # augmented with its own RNG
  ds = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
  if repeats > 1:
    ds = _RepeatEach(ds, repeats)
  ds = ds.random_map(lambda index, rng: records.get_or_next(index, fn, rng))
  ds = _GlobalBatchRows(ds, global_batch, rows)
  ds = ds.batch(len(rows), drop_remainder=True, batch_fn=stack_records)
  return ds, source


def _read_options(data_config) -> grain.ReadOptions:
  threads = max(0, int(data_config.num_threads))
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads * 2, 1))


def train_iterator(data_config, *, global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1, rows=None, transform=train_transform):
  """A checkpointable iterator (``get_state``/``set_state``) over ``train_dataset``."""
  ds, _ = train_dataset(data_config, global_batch=global_batch, seed=seed,
                        process_index=process_index, process_count=process_count,
                        rows=rows, transform=transform)
  return iter(ds.to_iter_dataset(_read_options(data_config)))


def eval_batches(data_config, split: str, *, global_batch: int, rows=None,
                 max_examples: int | None = None):
  """``(number of batches, iterator factory)`` over a split, in order, padded.

  Global batch ``k`` holds examples ``[k*B, (k+1)*B)`` (centre crop at
  ``data.eval_crop_pct``, the same on every frame of a clip); rows past the end of
  the split are zeros with ``valid == False``, as are skipped corrupt images
  (``data.skip_corrupt``). Images are uint8. A process yields the ``rows`` of each global batch (all of them by
  default), so every process yields the same number of batches and the evaluated
  examples do not depend on the process count. Streamed: ImageNet's validation set
  does not fit in memory.
  """
  source, _, _ = open_checked(data_config, split)
  rows = _checked_rows(range(global_batch) if rows is None else rows, global_batch)
  n = len(source) if not max_examples else min(int(max_examples), len(source))
  num_batches = -(-n // global_batch)
  size, channels = data_config.image_size, data_config.channels
  transform = functools.partial(_eval_transform, size=size, channels=channels,
                                crop_pct=float(data_config.get("eval_crop_pct", 0.875)))
  padding = {"image": np.zeros(example_shape(data_config),
                               getattr(source, "dtype", np.uint8)), "label": np.int32(0),
             "valid": np.bool_(False)}
  records = Records(source, data_config.get("skip_corrupt", False))

  def example(i: int) -> dict:
    batch, row = divmod(i, len(rows))
    index = batch * global_batch + rows[row]
    out = records.get(index, transform) if index < n else None
    return padding if out is None else {**out, "valid": np.bool_(True)}

  ds = grain.MapDataset.range(num_batches * len(rows)).map(example)
  ds = ds.batch(len(rows), batch_fn=stack_records)
  return num_batches, lambda: iter(ds.to_iter_dataset(_read_options(data_config)))


def eval_arrays(data_config, split: str, max_examples: int | None = None,
                process_index: int = 0, process_count: int = 1):
  """Whole split (or its first ``max_examples``), un-augmented, as NumPy arrays.

  Returns ``(images [N, H, W, C] float32 normalised, labels [N] int32)``; corrupt
  images skipped (``data.skip_corrupt``) are left out.
  """
  source, mean, std = open_checked(data_config, split)
  n = len(source) if not max_examples else min(max_examples, len(source))
  records = Records(source, data_config.get("skip_corrupt", False))
  transform = functools.partial(_eval_transform, size=data_config.image_size,
                                channels=data_config.channels)
  examples = [records.get(i, transform) for i in range(process_index, n, process_count)]
  batch = stack_records([e for e in examples if e is not None])
  return augment.normalize(batch["image"], mean, std), batch["label"]


def normalization(data_config, dataset_required: bool = True):
  """The mean/std the pipeline uses for this config (for un-normalising images).

  With ``dataset_required=False`` (images from elsewhere, e.g. ``visualize
  --images``) a dataset that is not available here falls back to
  ``stats.default_stats`` of its name and channels (or ``data.mean/std``).
  """
  try:
    return normalization_stats(open_source(data_config, data_config.split), data_config)
  except DataError as e:
    if dataset_required:
      raise
    logging.info("dataset not available (%s); normalising with the default statistics "
                 "for its name and channels", str(e).splitlines()[0][:120])
    mean, std = default_stats(data_config.name, data_config.channels)
    return normalization_stats(types.SimpleNamespace(mean=mean, std=std), data_config)

