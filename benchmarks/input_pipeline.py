"""Images/s per CPU core of ImageNet-style pretraining input: JPEG decode +
RandomResizedCrop(224, scale 0.2-1, bicubic) + horizontal flip + batch.

Writes synthetic ImageNet-like JPEGs (~500x375, ~76 KB, photo-like spectra) both as
a folder of files and as a small TFDS dataset in ArrayRecord format, then runs each
pipeline in its own process pinned to one core (``os.sched_setaffinity``):

  torchvision    the official loader (``pil_loader`` + RandomResizedCrop(224, bicubic) +
                 RandomHorizontalFlip + ToTensor + stack), if installed: the reference.
                 Normalize is left out (the trainer normalises on the device), which
                 makes this reference faster and every ratio against it smaller
  pil_numpy      the same work in PIL + NumPy: PIL decode of the whole image,
                 torchvision's RRC box sampling, crop + bicubic resize, flip,
                 normalise, stack
  grain_full     the trainer's grain pipeline (``mae_jax.data.pipeline``) over the
                 TFDS source with TFDS's own full decode of every JPEG
  grain          the same pipeline as the trainer runs it by default
                 (``data.augment.rrc_backend=pil``): the source hands over JPEG bytes
                 and ``mae_jax.data.jpeg`` decodes with PIL draft mode (reduced-size
                 DCT decode when the crop allows)
  grain_fast     the same with ``rrc_backend=fast``: simplejpeg decode + torch's
                 uint8 antialiased bicubic resize
  (the grain rows yield uint8 batches, as the trainer ships them: normalisation runs
  in the jitted step)
  tf_data        tf.data: ``sample_distorted_bounding_box`` + ``decode_and_crop_jpeg``
                 + bicubic (antialiased) resize + flip + normalise + batch
  components     CPU ms per image of each piece (header, decode, resize, normalise...)

Each prints one JSON line with ``img_per_s`` (wall clock on its core) and
``img_per_cpu_s`` (images per CPU-second the process used, ``time.process_time``:
the per-core rate with the time other processes took from that core left out; on a
busy shared machine this is the number to compare), and ``vs_torchvision``: its
``img_per_cpu_s`` over the torchvision row's of the same run and repeat. The grain
rows also check determinism (same seed, same batches) and exact resumption
(``get_state``/``set_state``).

  python benchmarks/input_pipeline.py --out=benchmarks/results/input_pipeline_cpu_DATE.jsonl
"""
from __future__ import annotations

import argparse
import datetime
import functools
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DATASET = "mae_synthetic_jpeg"
PATHS = ("torchvision", "pil_numpy", "grain_full", "grain", "grain_fast", "tf_data",
         "components")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


# ------------------------------------------------------------------ synthetic data


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A photo-like uint8 image: smooth shapes, mid-frequency texture and sensor noise,
  so that JPEG sizes and decode work resemble ImageNet's."""
  from PIL import Image

  def field(gh, gw, filt):
    small = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), filt), np.float32)

  image = 0.55 * field(6, 8, Image.BICUBIC) + 0.45 * field(40, 54, Image.BILINEAR)
  image += rng.normal(0.0, 11.0, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: str, num_images: int, quality: int = 90, seed: int = 0,
                  shape: tuple[int, int] = (375, 500),
                  file_format: str = "array_record", tfds: bool = True) -> dict:
  """``root/jpeg/*.jpg`` and a TFDS dataset of them under ``root/tfds`` (ArrayRecord;
  ``file_format="tfrecord"``: TFDS's older default, which needs converting; ``tfds=False``:
  the folder only, for the paths that read files).

  Images are ``shape`` (height, width), every fourth one transposed (portrait).
  """
  from PIL import Image
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, "jpeg")
  os.makedirs(folder, exist_ok=True)
  sizes, shapes = [], []
  for i in range(num_images):
    h, w = shape if i % 4 else shape[::-1]
    buf = io.BytesIO()
    Image.fromarray(synthetic_photo(rng, h, w)).save(buf, format="JPEG", quality=quality)
    with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
      f.write(buf.getvalue())
    sizes.append(len(buf.getvalue()))
    shapes.append((h, w))
  if tfds:
    _build_tfds(root, file_format)
  return {"num_images": num_images, "mean_kb": float(np.mean(sizes)) / 1000,
          "jpeg_quality": quality, "shapes": sorted(set(shapes))}


@functools.cache
def _builder_class():
  """Defined once per process and not registered: every copy of this module (tests load
  it from several places) builds the same dataset, which readers find by its folder."""
  import tensorflow_datasets as tfds

  class MaeSyntheticJpeg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Synthetic ImageNet-like JPEGs for the input-pipeline benchmark."""
    name = DATASET
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, folder: str = "", **kwargs):
      self._folder = folder
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=1000)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, name in enumerate(sorted(os.listdir(self._folder))):
        yield i, {"image": os.path.join(self._folder, name), "label": i % 1000}

  return MaeSyntheticJpeg


def _build_tfds(root: str, file_format: str = "array_record"):
  builder = _builder_class()(folder=os.path.join(root, "jpeg"),
                             data_dir=os.path.join(root, "tfds"), file_format=file_format)
  builder.download_and_prepare(
      download_config=__import__("tensorflow_datasets").download.DownloadConfig(
          verify_ssl=False))


# ------------------------------------------------------------------ the pipelines


def _files(root: str) -> list[str]:
  folder = os.path.join(root, "jpeg")
  return [os.path.join(folder, n) for n in sorted(os.listdir(folder))]


def pil_numpy_batches(root: str, batch: int, seed: int = 0):
  from PIL import Image
  from mae_jax.data import augment
  files = _files(root)
  rng = np.random.default_rng(seed)
  mean = np.asarray(MEAN, np.float32) * 255
  std = np.asarray(STD, np.float32) * 255
  while True:
    for start in range(0, len(files) - batch + 1, batch):
      out = []
      for path in (files[i] for i in rng.permutation(len(files))[:batch]):
        with open(path, "rb") as f:
          image = Image.open(f).convert("RGB")   # full decode
        top, left, h, w = augment.rrc_box(rng, image.height, image.width, SCALE, RATIO)
        crop = np.asarray(image.crop((left, top, left + w, top + h))
                          .resize((224, 224), Image.BICUBIC))
        if rng.random() < 0.5:
          crop = crop[:, ::-1]
        out.append((crop.astype(np.float32) - mean) / std)
      yield np.stack(out)


def torchvision_batches(root: str, batch: int, seed: int = 0):
  import torch
  from PIL import Image
  from torchvision import transforms
  torch.set_num_threads(1)
  torch.manual_seed(seed)
  transform = transforms.Compose([
      transforms.RandomResizedCrop(224, scale=SCALE, ratio=RATIO,
                                   interpolation=transforms.InterpolationMode.BICUBIC),
      transforms.RandomHorizontalFlip(), transforms.ToTensor()])
  files = _files(root)
  while True:
    order = torch.randperm(len(files)).tolist()
    for start in range(0, len(files) - batch + 1, batch):
      out = []
      for i in order[start:start + batch]:
        with open(files[i], "rb") as f:
          out.append(transform(Image.open(f).convert("RGB")))
      yield torch.stack(out)


class _Config(dict):
  __getattr__ = dict.__getitem__


def grain_config(root: str, rrc_backend: str = "pil") -> _Config:
  return _Config(name=DATASET, source="tfds", data_dir=os.path.join(root, "tfds"),
                 idx_dir="", download=False, split="train", image_size=224, channels=3,
                 mean=(), std=(), num_threads=0,
                 augment=_Config(rrc_scale=SCALE, rrc_ratio=RATIO, hflip=True,
                                 rrc_backend=rrc_backend))


# path -> (JPEG bytes to the augmentation, data.augment.rrc_backend)
GRAIN_PATHS = {"grain_full": (False, "pil"), "grain": (True, "pil"),
               "grain_fast": (True, "fast")}


def grain_iterator(root: str, batch: int, seed: int = 0, path: str = "grain"):
  """The trainer's iterator (``pipeline.train_iterator``) over the TFDS dataset."""
  from mae_jax.data import pipeline, sources
  lazy_jpeg, backend = GRAIN_PATHS[path]
  sources.TfdsSource.decode_jpeg_lazily = lazy_jpeg
  return pipeline.train_iterator(grain_config(root, backend), global_batch=batch, seed=seed)


def grain_batches(root: str, batch: int, path: str):
  it = grain_iterator(root, batch, path=path)
  while True:
    yield next(it)["image"]


def grain_checks(root: str, path: str) -> dict:
  """Same seed -> same batches; a restored iterator continues exactly."""
  a = grain_iterator(root, 4, seed=5, path=path)
  first = next(a)["image"]
  state = a.get_state()
  second = next(a)["image"]
  b = grain_iterator(root, 4, seed=5, path=path)
  deterministic = bool(np.array_equal(next(b)["image"], first))
  c = grain_iterator(root, 4, seed=5, path=path)
  c.set_state(state)
  resumable = bool(np.array_equal(next(c)["image"], second))
  return {"deterministic": deterministic, "resumable": resumable}


def tf_data_batches(root: str, batch: int, seed: int = 0):
  import tensorflow as tf
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  mean = tf.constant(MEAN) * 255.0
  std = tf.constant(STD) * 255.0
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])

  def parse(path):
    data = tf.io.read_file(path)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.io.extract_jpeg_shape(data), bounding_boxes=whole, min_object_covered=0.0,
        aspect_ratio_range=RATIO, area_range=SCALE, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(size)
    image = tf.io.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3)
    image = tf.image.resize(image, (224, 224), method="bicubic", antialias=True)
    image = tf.image.random_flip_left_right(image)
    return (image - mean) / std

  tf.random.set_seed(seed)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.autotune.enabled = False
  files = _files(root)
  ds = (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).repeat()
        .map(parse, num_parallel_calls=1).batch(batch, drop_remainder=True).prefetch(1)
        .with_options(options))
  for images in ds.as_numpy_iterator():
    yield images


def components(root: str, n: int = 128) -> dict:
  """CPU milliseconds per image of each step of the work, on this core."""
  from PIL import Image
  from mae_jax.data import augment, jpeg
  files = _files(root)[:32]
  datas = [open(f, "rb").read() for f in files]
  decoded = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
  arrays = [np.asarray(im) for im in decoded]
  rng = np.random.default_rng(0)
  boxes = [augment.rrc_box(rng, a.shape[0], a.shape[1], SCALE, RATIO) for a in arrays]
  crop = augment.random_resized_crop(arrays[0], rng, 224)

  def resize(i):
    top, left, h, w = boxes[i]
    decoded[i].crop((left, top, left + w, top + h)).resize((224, 224), Image.BICUBIC)

  ops = {
      "jpeg_header": lambda i: Image.open(io.BytesIO(datas[i])).size,
      "pil_full_decode": lambda i: Image.open(io.BytesIO(datas[i])).convert("RGB"),
      "pil_bicubic_crop_resize_224": resize,
      "jpeg_py_decode_crop_resize": lambda i: jpeg.random_resized_crop(datas[i], rng, 224),
      "normalize_float32": lambda i: augment.normalize(crop[:, ::-1], MEAN, STD),
  }
  if _available("grain_fast"):
    ops.update({
        "simplejpeg_full_decode": lambda i: jpeg.turbo_decode(datas[i]),
        "torch_bicubic_crop_resize_224": lambda i: augment.resize_crop(
            arrays[i], boxes[i], 224, "fast"),
        "jpeg_py_fast_decode_crop_resize": lambda i: jpeg.random_resized_crop(
            datas[i], rng, 224, backend="fast"),
    })
  try:
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    crops = [[b[0], b[1], b[2], b[3]] for b in boxes]
    ops["tf_decode_and_crop"] = lambda i: tf.io.decode_and_crop_jpeg(
        datas[i], crops[i], channels=3).numpy()
  except ImportError:
    pass
  out = {}
  for name, op in ops.items():
    for i in range(8):
      op(i % len(files))
    start = time.process_time()
    for i in range(n):
      op(i % len(files))
    out[name] = 1e3 * (time.process_time() - start) / n
  return {"cpu_ms_per_image": out}


def make_batches(path: str, root: str, batch: int):
  if path == "pil_numpy":
    return pil_numpy_batches(root, batch)
  if path == "torchvision":
    return torchvision_batches(root, batch)
  if path in GRAIN_PATHS:
    return grain_batches(root, batch, path)
  if path == "tf_data":
    return tf_data_batches(root, batch)
  raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")


# ------------------------------------------------------------------ measurement


def measure(path: str, root: str, batch: int, num_batches: int, core: int) -> dict:
  """Runs in a process pinned to ``core``: warm-up batch, then ``num_batches`` timed."""
  os.sched_setaffinity(0, {core})
  if path == "components":
    return {"path": path, "core": core, **components(root)}
  batches = make_batches(path, root, batch)
  first = next(batches)
  shape, dtype = tuple(first.shape), str(first.dtype)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  images = batch * num_batches
  row = {"path": path, "img_per_s": images / wall, "img_per_cpu_s": images / cpu,
         "images": images, "batch": batch, "batch_shape": shape, "batch_dtype": dtype,
         "core": core, "wall_s": wall, "cpu_s": cpu}
  if path.startswith("grain"):
    row.update(grain_checks(root, path))
  return row


def _installed(module: str) -> bool:
  import importlib.util
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):   # a module set to None in sys.modules (tests)
    return False


def _available(path: str) -> bool:
  needs = {"torchvision": ("torch", "torchvision"), "tf_data": ("tensorflow",),
           "grain": ("grain", "tensorflow_datasets"),
           "grain_full": ("grain", "tensorflow_datasets"),
           "grain_fast": ("grain", "tensorflow_datasets", "simplejpeg", "torch")}.get(path, ())
  return all(_installed(m) for m in needs)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--paths", default=",".join(PATHS))
  p.add_argument("--num_images", type=int, default=256, help="distinct JPEGs written")
  p.add_argument("--shape", default="375x500", help="HxW of the synthetic JPEGs")
  p.add_argument("--quality", type=int, default=90, help="JPEG quality of the synthetic set")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--num_batches", type=int, default=8, help="timed batches per path")
  p.add_argument("--repeats", type=int, default=1, help="runs per path (rows each)")
  p.add_argument("--core", type=int, default=-1, help="CPU to pin to (-1: the last allowed)")
  p.add_argument("--data_dir", default="", help="reuse/keep the dataset here")
  p.add_argument("--out", default="", help="also append the JSON lines to this file")
  p.add_argument("--label", default="")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  core = args.core if args.core >= 0 else max(os.sched_getaffinity(0))
  if args.worker:
    print(json.dumps(measure(args.worker, args.data_dir, args.batch, args.num_batches,
                             core)), flush=True)
    return []

  root = args.data_dir or tempfile.mkdtemp(prefix="mae_jpeg_bench_")
  try:
    marker = os.path.join(root, "dataset.json")
    if os.path.exists(marker):
      with open(marker) as f:
        data_info = json.load(f)
    else:
      shape = tuple(int(v) for v in args.shape.lower().split("x"))
      data_info = write_dataset(root, args.num_images, args.quality, shape=shape)
      with open(marker, "w") as f:
        json.dump(data_info, f)
    common = {"date": datetime.date.today().isoformat(), "device": "cpu",
              "host_cpu": _cpu_model(), "cpus_visible": os.cpu_count(),
              "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(),
              "image_size": 224, "rrc_scale": SCALE, "dataset": data_info,
              "label": args.label or None}
    rows = []
    for _ in range(args.repeats):
      reference = None  # this repeat's torchvision row
      for path in args.paths.split(","):
        if not _available(path):
          print(f"skipping {path}: not installed", file=sys.stderr)
          continue
        cmd = [sys.executable, os.path.abspath(__file__), f"--worker={path}",
               f"--data_dir={root}", f"--batch={args.batch}",
               f"--num_batches={args.num_batches}", f"--core={core}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
          raise RuntimeError(f"{path} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(common, load_avg_1m=os.getloadavg()[0])
        if path == "torchvision":
          reference = row
        if reference is not None and "img_per_cpu_s" in row:
          row["vs_torchvision"] = row["img_per_cpu_s"] / reference["img_per_cpu_s"]
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(line + "\n")
    return rows
  finally:
    if not args.data_dir:
      shutil.rmtree(root, ignore_errors=True)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


if __name__ == "__main__":
  main()
