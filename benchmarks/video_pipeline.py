"""Clips/s per CPU core of video pretraining input: 16 frames every 4th, 224x224
RandomResizedCrop (scale 0.5-1, MAE-ST's) + flip, from 340x256 videos, through the
trainer's grain pipeline (``mae_jax.data.pipeline``), one row per source:

  video_folder   .mp4 files (H.264, 30 fps, a key frame every 2 s as many
                 encoders write them), decoded with PyAV by seeking
                 (``mae_jax.data.video_files``)
  tfds           the same frames as a TFDS video dataset (ArrayRecord,
                 ``tfds.features.Video`` with JPEG frames, quality 90), only the clip's
                 frames decoded (``mae_jax.data.video``)
  decode_files   PyAV decode of the clip's 16 frames alone (random windows, no crop)
  decode_tfds    JPEG decode of the clip's 16 frames alone (random windows, no crop)

The videos are synthetic but not flat: a photo-like texture panned across the frame
with a moving bright disc, so the codec has real work to do. Each row runs in its
own process pinned to one core (``os.sched_setaffinity``, ``data.num_threads=0``) and
prints one JSON line: ``clips_per_s`` (wall clock) and ``clips_per_cpu_s`` (clips per
CPU-second the process used: on a busy shared machine the number to compare);
``frames_decoded_per_clip`` for the file rows (the codec's frames, needed or not).

  python benchmarks/video_pipeline.py --out=benchmarks/results/video_pipeline_cpu_DATE.jsonl
"""
from __future__ import annotations

import argparse
import datetime
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
sys.path.insert(1, HERE)  # input_pipeline.py
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

PATHS = ("video_folder", "tfds", "decode_files", "decode_tfds")
NUM_FRAMES, STRIDE, SIZE = 16, 4, 224
HEIGHT, WIDTH = 256, 340
NAME = "mae_bench_video"


def synthetic_video(rng: np.random.Generator, length: int) -> np.ndarray:
  """uint8 [length, 256, 340, 3]: a smooth random texture panned 2 px a frame, and a
  bright disc moving across it."""
  big_h, big_w = HEIGHT + 2 * length + 8, WIDTH + 2 * length + 8
  from PIL import Image
  small = rng.integers(0, 256, (big_h // 8, big_w // 8, 3), dtype=np.uint8)
  texture = np.asarray(Image.fromarray(small).resize((big_w, big_h), Image.BICUBIC))
  texture = np.clip(texture.astype(np.int16) + rng.integers(-12, 13, texture.shape),
                    0, 255).astype(np.uint8)
  yy, xx = np.mgrid[:HEIGHT, :WIDTH]
  frames = np.empty((length, HEIGHT, WIDTH, 3), np.uint8)
  for f in range(length):
    frame = texture[2 * f:2 * f + HEIGHT, 2 * f:2 * f + WIDTH].copy()
    cy, cx = HEIGHT / 2 + 60 * np.sin(f / 15), (f * 3) % WIDTH
    frame[(yy - cy) ** 2 + (xx - cx) ** 2 < 30 ** 2] = 240
    frames[f] = frame
  return frames


def write_videos(root: str, num_videos: int, length: int, seed: int = 0) -> dict:
  """``root/videos/train/c<k>/v<i>.mp4`` and a TFDS dataset of the same frames."""
  import av
  rng = np.random.default_rng(seed)
  all_frames = []
  sizes = []
  for i in range(num_videos):
    frames = synthetic_video(rng, length)
    all_frames.append(frames)
    folder = os.path.join(root, "videos", "train", f"c{i % 4}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"v{i:03d}.mp4")
    with av.open(path, "w") as container:
      stream = container.add_stream("libx264", rate=30)
      stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
      stream.codec_context.gop_size = 60
      for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    sizes.append(os.path.getsize(path))
  _build_tfds(os.path.join(root, "tfds"), all_frames)
  return {"num_videos": num_videos, "frames": length, "height": HEIGHT, "width": WIDTH,
          "mp4_mean_kb": float(np.mean(sizes)) / 1024, "codec": "libx264 (PyAV), gop 60",
          "tfds_frames": "JPEG quality 90 (tfds.features.Video)"}


def _build_tfds(data_dir: str, videos):
  import tensorflow_datasets as tfds

  class MaeBenchVideo(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = NAME
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "video": tfds.features.Video(shape=(None, HEIGHT, WIDTH, 3),
                                       encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, frames in enumerate(videos):
        yield i, {"video": frames, "label": i % 4}

  builder = MaeBenchVideo(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))


def data_config(root: str, path: str):
  from mae_jax import config_lib
  c = config_lib.pretrain_defaults("B/16")
  config_lib.video_defaults(c, tubelet_size=2, num_frames=NUM_FRAMES)
  c.data.update(image_size=SIZE, channels=3, num_threads=0, mean=(0.45,) * 3,
                std=(0.225,) * 3, split="train")
  c.data.video.stride = STRIDE
  c.data.augment.update(rrc_scale=(0.5, 1.0), rrc_ratio=(0.75, 1.3333), hflip=True)
  if path in ("video_folder", "decode_files"):
    c.data.update(source="video_folder", data_dir=os.path.join(root, "videos"))
  else:
    c.data.update(name=NAME, source="tfds", data_dir=os.path.join(root, "tfds"))
  return c.data


def make_batches(path: str, root: str, batch: int):
  from mae_jax.data import pipeline, video
  data = data_config(root, path)
  if path in ("video_folder", "tfds"):
    it = pipeline.train_iterator(data, global_batch=batch, seed=0)
    while True:
      yield next(it)["image"]
  source = pipeline.open_checked(data, "train")[0]
  rng = np.random.default_rng(0)
  while True:
    clips = []
    for _ in range(batch):
      clip = source[int(rng.integers(len(source)))]["image"]
      clips.append(clip.window(video.random_start(rng, len(clip.frames), NUM_FRAMES,
                                                  STRIDE)))
    yield np.stack(clips)


def measure(path: str, root: str, batch: int, num_batches: int, core: int) -> dict:
  os.sched_setaffinity(0, {core})
  batches = make_batches(path, root, batch)
  first = next(batches)
  from mae_jax.data import video_files
  counted = [0]
  original = video_files.VideoFile.decode

  def counting(self, indices):   # frames out of the codec per clip (file rows)
    out = original(self, indices)
    counted[0] += self.frames_decoded
    self.frames_decoded = 0
    return out
  video_files.VideoFile.decode = counting
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  clips = batch * num_batches
  row = {"path": path, "clips_per_s": clips / wall, "clips_per_cpu_s": clips / cpu,
         "clips": clips, "batch": batch, "batch_shape": list(first.shape), "core": core,
         "wall_s": wall, "cpu_s": cpu}
  if path in ("video_folder", "decode_files"):
    row["frames_decoded_per_clip"] = counted[0] / clips
  return row


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--paths", default=",".join(PATHS))
  p.add_argument("--num_videos", type=int, default=16)
  p.add_argument("--frames", type=int, default=300, help="frames per video (10 s at 30 fps)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--num_batches", type=int, default=4, help="timed batches per path")
  p.add_argument("--repeats", type=int, default=1, help="runs of every path, interleaved")
  p.add_argument("--core", type=int, default=-1, help="CPU to pin to (-1: the last allowed)")
  p.add_argument("--data_dir", default="", help="reuse/keep the videos here")
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
  root = args.data_dir or tempfile.mkdtemp(prefix="mae_video_bench_")
  try:
    marker = os.path.join(root, "dataset.json")
    if os.path.exists(marker):
      with open(marker) as f:
        data_info = json.load(f)
    else:
      t0 = time.perf_counter()
      data_info = write_videos(root, args.num_videos, args.frames)
      data_info["write_s"] = time.perf_counter() - t0
      with open(marker, "w") as f:
        json.dump(data_info, f)
    import input_pipeline  # (its TFDS imports only where this benchmark runs)
    common = {"date": datetime.date.today().isoformat(), "device": "cpu",
              "host_cpu": input_pipeline._cpu_model(), "cpus_visible": os.cpu_count(),
              "python": platform.python_version(), "num_frames": NUM_FRAMES,
              "stride": STRIDE, "image_size": SIZE, "dataset": data_info,
              "label": args.label or None}
    rows = []
    for repeat in range(args.repeats):
      run = []
      for path in args.paths.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), f"--worker={path}",
               f"--data_dir={root}", f"--batch={args.batch}",
               f"--num_batches={args.num_batches}", f"--core={core}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
          raise RuntimeError(f"{path} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(common, repeat=repeat, load_avg_1m=os.getloadavg()[0])
        run.append(row)
      for row in run:   # the file rows against their TFDS counterparts of the same repeat
        peer = {"video_folder": "tfds", "decode_files": "decode_tfds"}.get(row["path"])
        peer = next((r for r in run if r["path"] == peer), None)
        if peer is not None:
          row["vs_tfds"] = row["clips_per_cpu_s"] / peer["clips_per_cpu_s"]
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(line + "\n")
      rows += run
    return rows
  finally:
    if not args.data_dir:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
