"""Random-access image sources: IDX files (the embedded Fashion-MNIST), TFDS, and
folders of image files (``DIR/<split>/<class>/<image>``, torchvision's ImageFolder);
``open_source`` opens the one ``config.data`` names (``OPENERS``: one opener per
``data.source``), clip sources included: moving Fashion-MNIST
(``mae_jax.data.moving_fmnist``), TFDS video datasets (``mae_jax.data.video``,
when the config has ``data.video``) and video files (``mae_jax.data.video_files``).

Every source has ``len()``, ``[i] -> {"image": [H, W, C], "label": int}``,
``num_classes``, ``channels``, the pixel type ``dtype`` (uint8, uint16 or float32:
``mae_jax.data.arrays``) and per-channel ``mean``/``std`` in units of the type's
range, or ``None`` for data without known statistics (multispectral bands, 16-bit
sensors): the pipeline then computes them from the training split
(``pipeline.resolve_stats``).
They feed the same grain pipeline (``mae_jax.data.pipeline``). An image that
cannot be decoded raises ``CorruptImageError`` naming the file or record.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import os
import struct

import numpy as np

from mae_jax import fileio
from mae_jax.data import arrays, moving_fmnist, video, video_files
from mae_jax.data.decode import decode_image, image_mode
from mae_jax.data.stats import FASHION_MNIST_MEAN, FASHION_MNIST_STD, default_stats
from mae_jax.data.tfds_split import open_tfds
from mae_jax.errors import ConfigError, CorruptImageError, DataError

# The Debian package `dataset-fashion-mnist` installs the IDX files here.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# torchvision.datasets.folder.IMG_EXTENSIONS: the files an ImageFolder reads
# (matched case-insensitively); other files are ignored, as there.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped); a clear error for truncated data.

  A local file's decoded array (read-only) is kept for the process, keyed by its path,
  size and modification time: every task and evaluator of a run, and every run of a
  process, opens the same Fashion-MNIST files (gunzip: ~0.4 s each time)."""
  if "://" not in path:
    try:
      st = os.stat(path)
    except OSError:
      pass
    else:
      return _read_local_idx(path, st.st_size, st.st_mtime_ns)
  return _decode_idx(path)


@functools.lru_cache(maxsize=8)
def _read_local_idx(path: str, size: int, mtime_ns: int) -> np.ndarray:
  del size, mtime_ns  # the cache key: a changed file is read again
  return _decode_idx(path)


def _decode_idx(path: str) -> np.ndarray:
  try:
    data = fileio.read_bytes(path)
    if path.endswith(".gz"):
      data = gzip.decompress(data)
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read IDX file {path}: {e}. Reinstall the dataset "
                    "(apt-get install --reinstall dataset-fashion-mnist).") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise DataError(f"{path} is not an IDX file (bad magic number).")
  ndim = data[3]
  dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = int(np.prod(dims)) * dtype.itemsize
  payload = data[4 + 4 * ndim:]
  if len(payload) != expected:
    raise DataError(f"{path} is truncated or corrupt: header promises {expected} bytes "
                    f"of data, file has {len(payload)}. Reinstall the dataset.")
  return np.frombuffer(payload, dtype).reshape(dims)


@dataclasses.dataclass
class ArraySource:
  """In-memory images [N, H, W, C] uint8 with integer labels."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str = "arrays"

  def __post_init__(self):
    if self.images.ndim == 3:
      self.images = self.images[..., None]
    if len(self.images) != len(self.labels):
      raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels.")

  @property
  def channels(self) -> int:
    return self.images.shape[-1]

  @property
  def dtype(self) -> np.dtype:
    return self.images.dtype

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": int(self.labels[index])}


def _find(idx_dir: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    path = fileio.join(idx_dir, name)
    if fileio.exists(path):
      return path
  raise FileNotFoundError(fileio.join(idx_dir, stem))


def fashion_mnist_idx(idx_dir: str, split: str) -> ArraySource:
  prefix = {"train": "train", "test": "t10k"}.get(split)
  if prefix is None:
    raise DataError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
  images = read_idx(_find(idx_dir, f"{prefix}-images-idx3-ubyte"))
  labels = read_idx(_find(idx_dir, f"{prefix}-labels-idx1-ubyte"))
  return ArraySource(images, labels.astype(np.int32), 10, FASHION_MNIST_MEAN,
                     FASHION_MNIST_STD, name=f"fashion_mnist:{split}")


class TfdsSource:
  """``tfds.data_source`` (ArrayRecord) over any prepared TFDS dataset.

  A JPEG-encoded ``image`` feature is not decoded here: records carry a
  ``mae_jax.data.jpeg.JpegImage`` and the augmentation decodes only what its crop
  needs (``decode_jpeg_lazily = False`` restores TFDS's full decode).

  ``image_key`` names the feature holding the pixels: an ``Image`` or a
  ``Tensor`` of shape ``[H, W, C]`` with any number of channels, of uint8, uint16
  or float32 (e.g. ``eurosat/all``'s 13 Sentinel-2 bands, ``sentinel2``).
  """
  decode_jpeg_lazily = True

  def __init__(self, name: str, split: str, data_dir: str | None, download: bool,
               image_key: str = "image"):
    import tensorflow_datasets as tfds
    self.image_key = image_key

    def decoders(info):
      feature = info.features[image_key] if image_key in info.features else None
      self._lazy_jpeg = (self.decode_jpeg_lazily and
                         getattr(feature, "encoding_format", None) == "jpeg")
      return {image_key: tfds.decode.SkipDecoding()} if self._lazy_jpeg else None
    info, self._source = open_tfds(name, split, data_dir, download, decoders)
    self.name = name
    if image_key not in info.features:
      raise DataError(f"TFDS dataset {name!r} has no feature {image_key!r}; its features "
                      f"are {', '.join(info.features)}: set --config.data.image_key to the "
                      "one holding the images.")
    feature = info.features[image_key]
    self.num_classes = info.features["label"].num_classes if "label" in info.features else 0
    shape = feature.shape
    if len(shape) not in (2, 3):
      raise DataError(f"TFDS feature {name}:{image_key} has shape {shape}; images are "
                      "[H, W, C] (or [H, W]).")
    self.channels = (shape[-1] or 3) if len(shape) == 3 else 1
    self.dtype = np.dtype(getattr(feature, "np_dtype", np.uint8))
    arrays.pixel_scale(self.dtype)  # a clear error for a type mae_jax does not read
    if self.channels in (1, 3) and self.dtype == np.uint8:
      self.mean, self.std = default_stats(name, self.channels)
    else:  # bands and sensors without known statistics: the training split's
      self.mean = self.std = None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    if self._lazy_jpeg:
      from mae_jax.data import jpeg
      image = jpeg.JpegImage(record[self.image_key], self.channels,
                             f"{self.name}: record {index}")
      return {"image": image, "label": int(record.get("label", -1))}
    image = np.asarray(record[self.image_key])
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": int(record.get("label", -1))}


# ----------------------------------------------------------------- image folders


def read_image(path, channels: int = 3, lazy_jpeg: bool = False):
  """The image file at ``path`` (local or ``gs://``, through ``mae_jax.fileio``)
  as uint8 ``[H, W, channels]``: grey, palette, RGBA and CMYK images are converted
  (PIL ``convert``, as torchvision's ``pil_loader`` does for RGB). With ``lazy_jpeg``
  a JPEG stays encoded (``jpeg.JpegImage``; its crop decodes only what it needs).
  A file that cannot be read or decoded raises ``CorruptImageError`` naming it.
  """
  from mae_jax.data import jpeg
  image_mode(channels)
  data = arrays.read_image_bytes(path, jpeg.SKIP_HINT)
  if lazy_jpeg and data[:2] == b"\xff\xd8":
    return jpeg.JpegImage(data, channels, str(path))
  return decode_image(data, channels, str(path))


def find_classes(directory) -> list[str]:
  """Sorted names of the sub-folders of ``directory`` (torchvision's ``find_classes``)."""
  return sorted(p.name for p in fileio.path(directory).iterdir() if p.is_dir())


@functools.lru_cache(maxsize=8)
def scan_image_folder(directory: str,
                      extensions: tuple[str, ...] = IMG_EXTENSIONS) -> tuple[tuple[str, ...], dict]:
  """``(classes, {class: (image paths, ...)})`` of ``directory/<class>/...``.

  The order of torchvision's ``make_dataset``: classes sorted, then the folders
  under a class (walked recursively) sorted by path, then file names sorted; only
  files with ``extensions`` (``IMG_EXTENSIONS``; video folders pass theirs). Cached:
  a run opens a split several times.
  """
  classes = find_classes(directory)
  # gcsfs walks a gs:// folder as "bucket/..." paths: put the scheme back
  scheme = directory[:directory.index("://") + 3] if fileio.is_remote(directory) else ""
  files = {}
  for name in classes:
    walked = sorted((_with_scheme(str(root), scheme), filenames)
                    for root, _, filenames in (fileio.path(directory) / name).walk())
    files[name] = tuple(fileio.join(root, f) for root, filenames in walked
                        for f in sorted(filenames) if f.lower().endswith(extensions))
  return tuple(classes), files


def _with_scheme(path: str, scheme: str) -> str:
  return scheme + path if scheme and not path.startswith(scheme) else path


class FolderSource:
  """Image files in ``root/<split>/<class>/...``, the layout of torchvision's
  ``ImageFolder`` (and of the official MAE code's ImageNet): same classes, same
  labels, same sample order.

  Labels come from the class folders of ``classes_split`` (the training split), so
  a validation folder that lacks a class keeps every other label right; a class
  the training split does not have is an error. JPEGs are handed over encoded
  (``jpeg.JpegImage``), other formats decoded; every image becomes ``channels``
  channels. Video folders (``video_files.VideoFolderSource``) change the class
  attributes below.
  """

  extensions = IMG_EXTENSIONS + (".npy",)
  source = "folder"   # the data.source that reads it, for the messages
  kind = "image"

  def __init__(self, root: str, split: str, channels: int = 3,
               classes_split: str | None = None):
    directory = fileio.path(root) / split
    if not directory.is_dir():
      raise DataError(f"{directory} is not a folder: data.source={self.source} reads "
                      f"DATA_DIR/<split>/<class>/<{self.kind}> (here split {split!r}; set "
                      "--config.data.data_dir, and data.split / data.eval_split to the "
                      "sub-folder names).")
    self.name = str(directory)
    own_classes, files = scan_image_folder(self.name, self.extensions)
    if not own_classes:
      raise DataError(f"{directory} has no class sub-folders; put the {self.kind}s in "
                      f"{directory}/<class>/.")
    empty = [c for c in own_classes if not files[c]]
    if empty:
      raise DataError(f"{directory}: class folder(s) {', '.join(empty[:5])} hold no "
                      f"{self.kind} files ({', '.join(self.extensions)}); add {self.kind}s "
                      "or remove them.")
    self.classes = self._label_classes(root, split, classes_split, own_classes)
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
    self.samples = [(path, self.class_to_idx[c]) for c in own_classes for path in files[c]]
    self.num_classes = len(self.classes)
    self.channels = channels
    self.dtype = np.dtype(np.uint8)
    self.arrays = self.kind == "image" and self._reads_arrays()
    if self.arrays:  # NumPy arrays, statistics computed from the training split
      self.dtype = arrays.read_array(self.samples[0][0], channels).dtype
      self.mean = self.std = None
    else:
      image_mode(channels)
      self.mean, self.std = default_stats("", channels)

  def _reads_arrays(self) -> bool:
    """Whether the images are read as arrays (``arrays.read_array``): ``.npy`` files,
    or any channel count PIL cannot hold (then ``.npy`` or TIFF files, read by
    tifffile). Folders of 1 or 3-channel photos are read as before (PIL)."""
    paths = [p for p, _ in self.samples]
    has_npy = any(p.lower().endswith(".npy") for p in paths)
    if not has_npy and self.channels in (1, 3):
      return False
    others = [p for p in paths if not p.lower().endswith(arrays.ARRAY_EXTENSIONS)]
    if others:
      raise DataError(f"{self.name}: {others[0]} is not an array file; with "
                      f"{'.npy files' if has_npy else f'data.channels={self.channels}'} "
                      f"every image must be a .npy or multi-band TIFF file "
                      f"({len(others)} are not).")
    return True
  def _label_classes(self, root, split, classes_split, own_classes):
    if not classes_split or classes_split == split:
      return own_classes
    reference = fileio.path(root) / classes_split
    if not reference.is_dir():
      logging.warning("%s is missing: labels of %s follow its own class folders",
                      reference, self.name)
      return own_classes
    classes, _ = scan_image_folder(str(reference), self.extensions)
    unknown = sorted(set(own_classes) - set(classes))
    if unknown:
      raise DataError(f"{self.name} has class folder(s) {', '.join(unknown[:5])} that "
                      f"{reference} does not have: labels would not match. Use the same "
                      "class folder names in every split.")
    return classes

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict:
    path, label = self.samples[index]
    if self.arrays:
      image = arrays.read_array(path, self.channels)
      if image.dtype != self.dtype:
        raise DataError(f"{path} holds {image.dtype.name} pixels, the folder's first "
                        f"image {self.dtype.name}; give every image the same type.")
      return {"image": image, "label": label}
    return {"image": read_image(path, self.channels, lazy_jpeg=True), "label": label}


class VideoFolderSource(FolderSource):
  """Video files in ``DATA_DIR/<split>/<class>/...``: the classes, labels and order of
  ``FolderSource`` with ``video_files.VIDEO_EXTENSIONS``; a record's image is the
  file's clip (``video_files.FileClip``), decoded when the augmentation picks its
  window."""

  extensions = video_files.VIDEO_EXTENSIONS
  source = "video_folder"
  kind = "video"

  def __init__(self, data_config, split: str):
    self.num_frames, self.stride = video_files.video_settings(data_config, self.source)
    if not data_config.data_dir:
      raise ConfigError("data.source=video_folder needs --config.data.data_dir=DIR with "
                        "DIR/<split>/<class>/<video files> (e.g. DIR/train, DIR/val).")
    super().__init__(data_config.data_dir, split, data_config.channels,
                     classes_split=data_config.split)

  def __getitem__(self, index: int) -> dict:
    path, label = self.samples[index]
    return {"image": video_files.open_clip(path, self.num_frames, self.stride, self.channels),
            "label": label}


MOVING_FASHION_MNIST = "moving_fashion_mnist"


def _image_config(data_config, name: str):
  """``data_config`` for the images dataset ``name`` (no ``video`` section)."""
  out = data_config.copy_and_resolve_references()
  out.name = name
  if "video" in out:
    with out.unlocked():   # command-line configs are locked
      del out["video"]
  return out


def _open_moving_fashion_mnist(data_config, split: str):
  images = open_source(_image_config(data_config, "fashion_mnist"), split)
  clips = data_config.video
  return moving_fmnist.MovingFashionMnist(
      images, seed=int(clips.seed), num_frames=int(clips.num_frames),
      canvas=int(data_config.image_size), num_items=int(clips.num_items))


def _open_folder(data_config, split: str):
  if not data_config.data_dir:
    raise ConfigError("data.source=folder needs --config.data.data_dir=DIR with "
                      "DIR/<split>/<class>/<image files> (e.g. DIR/train, DIR/val).")
  return FolderSource(data_config.data_dir, split, data_config.channels,
                      classes_split=data_config.split)


def _open_video_folder(data_config, split: str):
  return VideoFolderSource(data_config, split)


def _open_video_list(data_config, split: str):
  return video_files.VideoListSource(data_config, split)


def _open_tfds(data_config, split: str):
  if "video" in data_config:
    return video.TfdsVideoSource(data_config, split)
  return TfdsSource(data_config.name, split, data_config.data_dir,
                    download=data_config.download,
                    image_key=data_config.get("image_key", "image"))


def _open_idx(data_config, split: str):
  name = data_config.name
  if name != "fashion_mnist":
    raise DataError(f"data.source=idx only knows fashion_mnist, not {name!r}.")
  try:
    return fashion_mnist_idx(data_config.idx_dir or DEBIAN_FASHION_MNIST, split)
  except FileNotFoundError as e:
    raise DataError(
        f"Fashion-MNIST IDX file {e.args[0]}(.gz) not found. Install it with "
        "`apt-get install dataset-fashion-mnist` (Debian) or point "
        "--config.data.idx_dir at a folder with the four IDX files.") from None


def _open_auto(data_config, split: str):
  """Fashion-MNIST from its IDX files, else (and every other dataset) from TFDS."""
  name = data_config.name
  if "video" in data_config or name != "fashion_mnist":
    return _open_tfds(data_config, split)
  idx_dir = data_config.idx_dir or DEBIAN_FASHION_MNIST
  try:
    return fashion_mnist_idx(idx_dir, split)
  except FileNotFoundError:
    pass
  try:
    return TfdsSource(name, split, data_config.data_dir, download=True)
  except DataError as tfds_error:
    raise DataError(
        f"Fashion-MNIST not found: no IDX files in {idx_dir} (install the Debian "
        "package with `apt-get install dataset-fashion-mnist`, or set "
        f"--config.data.idx_dir) and the TFDS fallback failed: {tfds_error}") from None


# ``data.source`` -> ``opener(data_config, split)``. A dataset with ``data.video`` is
# read as clips by ``auto`` and ``tfds``; ``video_folder`` and ``video_list`` read video
# files (``mae_jax.data.video_files``).
OPENERS = {"auto": _open_auto, "idx": _open_idx, "tfds": _open_tfds, "folder": _open_folder,
           "video_folder": _open_video_folder, "video_list": _open_video_list}
# Datasets made from another one, whatever ``data.source`` says.
DERIVED = {MOVING_FASHION_MNIST: _open_moving_fashion_mnist}


def open_source(data_config, split: str):
  """The source named by ``config.data`` for one split, or a clear ``DataError``."""
  derived = DERIVED.get(data_config.name)
  if derived is not None:
    return derived(data_config, split)
  opener = OPENERS.get(data_config.source)
  if opener is None:
    raise DataError(f"data.source={data_config.source!r} is unknown; choose "
                    f"{', '.join(OPENERS)}.")
  return opener(data_config, split)
