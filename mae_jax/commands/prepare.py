"""mae-jax prepare --dataset=NAME --data_dir=DIR [--manual_dir=DIR] [--file_format=array_record]

With ``--convert``: add ArrayRecord files to a dataset TFDS prepared as TFRecord in DIR.
"""
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
_CONVERT = flags.DEFINE_bool("convert", False, "Convert the dataset already prepared in "
                              "--data_dir as TFRecord (TFDS's older default) so the input "
                              "pipeline reads it; the TFRecord files stay.")
flags.mark_flags_as_required(["dataset", "data_dir"])


def main(argv):
  del argv
  common.setup_logging()
  from mae_jax.data import prepare
  if _CONVERT.value:
    splits = prepare.convert(_DATASET.value, _DATA_DIR.value)
    done = "converted"
  else:
    splits = prepare.prepare(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value,
                             _FILE_FORMAT.value, _DOWNLOAD_DIR.value)
    done = "prepared"
  print(f"{done} {_DATASET.value} in {_DATA_DIR.value}: "
        + ", ".join(f"{split} {n:,} examples" for split, n in splits.items())
        + f". Train on it with --config.data.data_dir={_DATA_DIR.value}")
