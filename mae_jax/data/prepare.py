"""Builds a TFDS dataset on disk with TFDS's own builder, from this package's install.

``mae-jax prepare --dataset=imagenet2012 --manual_dir=DIR --data_dir=DIR`` is
``builder.download_and_prepare`` with the manual-download directory set: the
``tfds build`` command line needs apache_beam, which nothing here installs, and a
generator-based builder such as imagenet2012 does not. The default file format is
ArrayRecord, the one the input pipeline (``tfds.data_source`` + grain) reads.

``mae-jax prepare --dataset=imagenet2012 --data_dir=DIR --convert`` turns a dataset
TFDS already prepared in its older default format, TFRecord (what most existing
ImageNet buckets hold), into one the pipeline reads: every shard gets an ArrayRecord
twin with the same records in the same order, and ``dataset_info.json`` lists
``array_record`` as an alternative format (as ``tfds convert_format`` does, which
needs apache_beam). The TFRecord files stay; a converted shard is skipped when the
command runs again, so an interrupted conversion resumes.
"""
from __future__ import annotations

import logging
import os
import tempfile

from mae_jax import fileio
from mae_jax.errors import DataError

FILE_FORMATS = ("array_record", "tfrecord")


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return (lines[0] if lines else type(e).__name__)[:300]


def _one_line(text: str) -> str:
  return " ".join(text.split())


def prepare(name: str, data_dir: str, manual_dir: str | None = None,
            file_format: str = "array_record", download_dir: str | None = None) -> dict:
  """Builds TFDS dataset ``name`` (``name:version`` or ``name/config`` too) in
  ``data_dir``; returns ``{split: number of examples}``. A prepared dataset is
  left as it is.

  ``manual_dir``: the archives a manual-download dataset needs (imagenet2012:
  ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``). Raises
  ``DataError`` with one line for an unknown dataset, a missing archive or an
  unknown file format.
  """
  if file_format not in FILE_FORMATS:
    raise DataError(f"--file_format={file_format!r} is not one of {', '.join(FILE_FORMATS)} "
                    "(array_record is what the input pipeline reads).")
  if not data_dir:
    raise DataError("give --data_dir, the directory (local or gs://) to write the dataset to.")
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
  except Exception as e:  # DatasetNotFoundError and friends
    raise DataError(f"TFDS has no dataset {name!r} ({_first_line(e)}); see "
                    "https://www.tensorflow.org/datasets/catalog for the names.") from None
  instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if instructions and not manual_dir:
    raise DataError(f"{name} is a manual download: give --manual_dir, the directory "
                    f"holding the archives ({_one_line(instructions)})")
  if manual_dir and not fileio.isdir(manual_dir):
    raise DataError(f"--manual_dir={manual_dir} is not a directory.")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  logging.info("preparing %s in %s (%s) from %s", name, data_dir, file_format,
               manual_dir or "its download URLs")
  try:
    builder.download_and_prepare(download_dir=download_dir, download_config=config,
                                 file_format=file_format)
  except ModuleNotFoundError as e:
    raise DataError(f"building {name} needs the Python package {e.name!r}, which is not "
                    f"installed: pip install -c constraints.txt {e.name} (or reinstall "
                    "mae_jax, which depends on it).") from None
  except Exception as e:  # TFDS reports missing archives with AssertionError, ...
    hint = f" {_one_line(instructions)}" if instructions else ""
    raise DataError(f"preparing {name} failed: {_first_line(e)}.{hint}") from None
  splits = {split: info.num_examples for split, info in builder.info.splits.items()}
  logging.info("%s %s in %s: %s", name, builder.info.version, builder.data_dir,
               ", ".join(f"{k} {v:,}" for k, v in splits.items()))
  return splits


def convert(name: str, data_dir: str) -> dict:
  """Adds ArrayRecord shards to TFDS dataset ``name`` prepared as TFRecord in
  ``data_dir`` (local or ``gs://``); returns ``{split: number of examples}``. Each
  shard is converted in a local scratch folder and then copied, so that a remote
  ``data_dir`` works and a half-written shard never appears under its final name.
  A shard whose record count differs from ``dataset_info.json`` is refused.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import dataset_info as info_lib
  from tensorflow_datasets.core import file_adapters
  if not data_dir:
    raise DataError("give --data_dir, the directory (local or gs://) holding the dataset.")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception as e:
    raise DataError(f"TFDS has no dataset {name!r} in {data_dir} ({_first_line(e)}).") from None
  if not prepared:
    raise DataError(f"there is no prepared {name} in {data_dir} to convert: build it with "
                    f"`mae-jax prepare --dataset={name} --data_dir={data_dir}`, which "
                    "writes ArrayRecord directly.")
  version_dir = builder.data_path
  proto = info_lib.read_proto_from_builder_dir(version_dir)
  source_format = file_adapters.FileFormat(proto.file_format or "tfrecord")
  target = file_adapters.FileFormat.ARRAY_RECORD
  counts = {s.name: sum(int(n) for n in s.shard_lengths) for s in proto.splits}
  if source_format == target or target.value in proto.alternative_file_formats:
    logging.info("%s in %s is already readable as ArrayRecord", name, version_dir)
    return counts
  sources = info_lib.get_split_dict_from_proto(proto, version_dir, source_format)
  targets = info_lib.get_split_dict_from_proto(proto, version_dir, target)
  reader = file_adapters.ADAPTER_FOR_FORMAT[source_format]
  writer = file_adapters.ADAPTER_FOR_FORMAT[target]
  with tempfile.TemporaryDirectory(prefix="mae_jax_convert_") as scratch:
    for split_name, split in sources.items():
      pairs = list(zip(split.filepaths, targets[split_name].filepaths))
      for shard, ((src, dst), want) in enumerate(zip(pairs, split.shard_lengths)):
        if fileio.exists(dst):
          continue
        local_in = os.fspath(src)
        if fileio.is_remote(src):
          local_in = os.path.join(scratch, "in")
          fileio.copy_to_local(src, local_in)
        local_out = os.path.join(scratch, "out")
        records = ((i, r.numpy()) for i, r in enumerate(reader.make_tf_data(local_in)))
        try:
          writer.write_examples(local_out, records)
        except Exception as e:  # TF's DataLossError for a truncated shard, ...
          raise DataError(f"{src} cannot be read ({_first_line(e)}); the shards converted "
                          "so far are kept, and the dataset is unchanged.") from None
        got = _count_array_records(local_out)
        if got != int(want):
          raise DataError(f"{src} holds {got} records, dataset_info.json says {want}: "
                          "the shard is damaged; the dataset is unchanged.")
        fileio.copy_from_local(local_out, os.fspath(dst))
        logging.info("%s: shard %d/%d -> %s", split_name, shard + 1, len(pairs), dst)
  proto.alternative_file_formats.append(target.value)
  info_lib.write_dataset_info_proto(proto, dataset_info_dir=version_dir)
  logging.info("%s in %s: ArrayRecord added (%s)", name, version_dir,
               ", ".join(f"{k} {v:,}" for k, v in counts.items()))
  return counts


def _count_array_records(path: str) -> int:
  from array_record.python import array_record_module
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()
