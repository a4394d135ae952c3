"""One split of a prepared TFDS dataset opened for random access (ArrayRecord): what the
image source (``sources.TfdsSource``) and the clip source (``video.TfdsVideoSource``)
share."""
from __future__ import annotations

from mae_jax.errors import DataError


def open_tfds(name: str, split: str, data_dir: str | None, download: bool, decoders=None):
  """``(builder.info, data source)`` of split ``split`` of a prepared TFDS dataset read
  through ``builder.as_data_source`` (ArrayRecord), or a one-line ``DataError`` saying
  how to prepare it. ``decoders(info)`` gives ``as_data_source``'s decoders."""
  import tensorflow_datasets as tfds  # only the input pipeline needs TFDS
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    if download and not builder.is_prepared():
      builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
      builder.download_and_prepare(file_format="array_record")
    info = builder.info
    if builder.is_prepared() and not (info.available_file_formats() &
                                      set(tfds.core.FileFormat.with_random_access())):
      raise DataError(
          f"TFDS dataset {name!r} in {data_dir or 'the default data_dir'} is stored as "
          f"{info.file_format.value}, which has no random access: convert it once with "
          f"`mae-jax prepare --dataset={name} --data_dir={data_dir or 'DIR'} --convert` "
          "(adds ArrayRecord files beside it).")
    source = builder.as_data_source(split=split,
                                    decoders=decoders(info) if decoders else None)
  except DataError:
    raise
  except Exception as e:  # tfds raises many types; they all mean "not usable"
    raise DataError(
        f"TFDS dataset {name!r} (split {split!r}, data_dir {data_dir or 'default'}) is not "
        f"available: {str(e).splitlines()[0][:300]}. Prepare it with `mae-jax prepare "
        f"--dataset={name} --data_dir={data_dir or 'DIR'}` (add --manual_dir=DIR for a "
        "manual download such as imagenet2012: the directory holding its archives).") from None
  return info, source
