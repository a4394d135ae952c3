"""mae-jax prepare --dataset=NAME --data_dir=DIR [--manual_dir=DIR] [--file_format=array_record]

With ``--convert``: add ArrayRecord files to a dataset TFDS prepared as TFRecord in DIR.
"""
from __future__ import annotations

from absl import flags

from mae_jax.commands import common


def define_flags(fv, argv):
  flags.DEFINE_string("dataset", None, "TFDS name, e.g. imagenet2012 (or "
      "name:version, name/config).", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "Where to write the dataset (local or "
      "gs://); pass the same as --config.data.data_dir.", flag_values=fv)
  flags.DEFINE_string("manual_dir", None, "The downloaded archives of a manual-"
      "download dataset (imagenet2012: ILSVRC2012_img_train.tar, "
      "ILSVRC2012_img_val.tar).", flag_values=fv)
  flags.DEFINE_enum("file_format", "array_record", ["array_record", "tfrecord"],
      "Record format; the input pipeline reads array_record.", flag_values=fv)
  flags.DEFINE_string("download_dir", None, "Scratch directory for downloads "
      "and extraction (default: DATA_DIR/downloads).", flag_values=fv)
  flags.DEFINE_bool("convert", False, "Convert the dataset already prepared in "
      "--data_dir as TFRecord (TFDS's older default) so the input "
      "pipeline reads it; the TFRecord files stay.", flag_values=fv)
  flags.mark_flags_as_required(["dataset", "data_dir"], flag_values=fv)


def run(fv, args):
  common.refuse_arguments(args)
  common.setup_logging()
  from mae_jax.data import prepare
  if fv.convert:
    splits = prepare.convert(fv.dataset, fv.data_dir)
    done = "converted"
  else:
    splits = prepare.prepare(fv.dataset, fv.data_dir, fv.manual_dir,
                             fv.file_format, fv.download_dir)
    done = "prepared"
  print(f"{done} {fv.dataset} in {fv.data_dir}: "
        + ", ".join(f"{split} {n:,} examples" for split, n in splits.items())
        + f". Train on it with --config.data.data_dir={fv.data_dir}")
