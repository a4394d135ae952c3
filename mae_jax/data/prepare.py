"""Builds a TFDS dataset on disk with TFDS's own builder, from this package's install.

``mae-jax prepare --dataset=imagenet2012 --manual_dir=DIR --data_dir=DIR`` is
``builder.download_and_prepare`` with the manual-download directory set: the
``tfds build`` command line needs apache_beam, which nothing here installs, and a
generator-based builder such as imagenet2012 does not. The default file format is
ArrayRecord, the one the input pipeline (``tfds.data_source`` + grain) reads.
"""
from __future__ import annotations

import logging

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
