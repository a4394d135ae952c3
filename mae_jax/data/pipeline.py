"""Deterministic, resumable input pipelines on grain.

Why grain over a random-access source rather than tf.data: a ``MapDataset`` is
indexed, so batch ``k`` of a seed is a pure function of ``(seed, k)``; the
iterator state is one integer (saved in every checkpoint through grain's Orbax
handler), and a resumed run reads exactly the batches an uninterrupted run
would have. tf.data's shuffle buffer and parallel map are neither. The measured
cost on Fashion-MNIST is given in ``benchmarks/input_pipeline.py``.

Each process reads ``source[process_index::process_count]`` and the training loop
assembles the global batch with ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import functools

import grain
import numpy as np

from mae_jax.data import augment
from mae_jax.data.sources import open_source
from mae_jax.errors import ConfigError, DataError


def _stats(source, data_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  mean = tuple(data_config.mean) if data_config.mean else tuple(source.mean)
  std = tuple(data_config.std) if data_config.std else tuple(source.std)
  channels = data_config.channels
  if len(mean) == 1 and channels > 1:
    mean, std = mean * channels, std * channels
  if len(mean) != channels or len(std) != channels:
    raise ConfigError(f"data.mean/std have {len(mean)}/{len(std)} values for "
                      f"{channels} channels.")
  return mean, std


def _check_channels(source, channels: int):
  if channels not in (1, 3):
    raise ConfigError(f"data.channels must be 1 or 3, got {channels}.")
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
    raise DataError(f"{source.name}: record {index} cannot be read or decoded: {e}") from None


class _Indexed:
  """Adapts a source so that every read error names the record."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return _read(self.source, index)


def _train_transform(record: dict, rng: np.random.Generator, *, size, scale, ratio, hflip,
                     channels, mean, std) -> dict:
  image = augment.random_resized_crop(record["image"], rng, size, scale, ratio)
  if hflip and rng.random() < 0.5:
    image = image[:, ::-1]
  image = augment.match_channels(image, channels)
  return {"image": augment.normalize(image, mean, std), "label": np.int32(record["label"])}


def _eval_transform(record: dict, *, size, channels, mean, std) -> dict:
  image = augment.match_channels(augment.center_crop(record["image"], size), channels)
  return {"image": augment.normalize(image, mean, std), "label": np.int32(record["label"])}


def _stack(records):
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ConfigError(f"batch_size={global_batch} is not divisible by the number of "
                      f"processes ({process_count}).")
  return global_batch // process_count


def train_dataset(data_config, *, global_batch: int, seed: int, process_index: int = 0,
                  process_count: int = 1, split: str | None = None):
  """Infinite, shuffled (reshuffled per epoch), augmented, batched ``MapDataset``.

  Returns ``(dataset, source)``; ``dataset[k]`` is this process's part of batch ``k``.
  """
  source = open_source(data_config, split or data_config.split)
  _check_channels(source, data_config.channels)
  mean, std = _stats(source, data_config)
  aug = data_config.augment
  transform = functools.partial(
      _train_transform, size=data_config.image_size, scale=tuple(aug.rrc_scale),
      ratio=tuple(aug.rrc_ratio), hflip=aug.hflip, channels=data_config.channels,
      mean=mean, std=std)
  per_process = local_batch_size(global_batch, process_count)
  ds = grain.MapDataset.source(_Indexed(source))
  ds = ds.slice(slice(process_index, None, process_count))
  if len(ds) < per_process:
    raise DataError(f"{source.name} has {len(ds)} examples per process, fewer than one "
                    f"batch of {per_process}.")
  ds = ds.seed(seed).shuffle().repeat().random_map(transform)
  ds = ds.batch(per_process, drop_remainder=True, batch_fn=_stack)
  return ds, source


def train_iterator(data_config, *, global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1):
  """A checkpointable iterator (``get_state``/``set_state``) over ``train_dataset``."""
  ds, _ = train_dataset(data_config, global_batch=global_batch, seed=seed,
                        process_index=process_index, process_count=process_count)
  threads = max(0, int(data_config.num_threads))
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads * 2, 1))
  return iter(ds.to_iter_dataset(options))


def eval_arrays(data_config, split: str, max_examples: int | None = None,
                process_index: int = 0, process_count: int = 1):
  """Whole split (or its first ``max_examples``), un-augmented, as NumPy arrays.

  Returns ``(images [N, H, W, C] float32 normalised, labels [N] int32)``.
  """
  source = open_source(data_config, split)
  _check_channels(source, data_config.channels)
  mean, std = _stats(source, data_config)
  n = len(source) if not max_examples else min(max_examples, len(source))
  indices = range(process_index, n, process_count)
  records = [_eval_transform(_read(source, i), size=data_config.image_size,
                             channels=data_config.channels, mean=mean, std=std)
             for i in indices]
  batch = _stack(records)
  return batch["image"], batch["label"]


def normalization(data_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The mean/std the pipeline uses for this config (for un-normalising images)."""
  return _stats(open_source(data_config, data_config.split), data_config)
