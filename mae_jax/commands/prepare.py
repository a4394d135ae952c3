"""mae-jax prepare --dataset=NAME --data_dir=DIR [--manual_dir=DIR] [--file_format=array_record]"""
from __future__ import annotations

from absl import flags

from mae_jax.commands import common

_DATASET = flags.DEFINE_string("dataset", None, "TFDS name, e.g. imagenet2012 (or "
                               "name:version, name/config).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write the dataset (local or "
                                "gs://); pass the same as --config.data.data_dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The downloaded archives of a manual-"
                                  "download dataset (imagenet2012: ILSVRC2012_img_train.tar, "
                                  "ILSVRC2012_img_val.tar).")
_FILE_FORMAT = flags.DEFINE_enum("file_format", "array_record", ["array_record", "tfrecord"],
                                 "Record format; the input pipeline reads array_record.")
_DOWNLOAD_DIR = flags.DEFINE_string("download_dir", None, "Scratch directory for downloads "
                                    "and extraction (default: DATA_DIR/downloads).")
flags.mark_flags_as_required(["dataset", "data_dir"])


def main(argv):
  del argv
  common.setup_logging()
  from mae_jax.data import prepare
  splits = prepare.prepare(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value,
                           _FILE_FORMAT.value, _DOWNLOAD_DIR.value)
  print(f"prepared {_DATASET.value} in {_DATA_DIR.value}: "
        + ", ".join(f"{split} {n:,} examples" for split, n in splits.items())
        + f". Train on it with --config.data.data_dir={_DATA_DIR.value}")
