"""Video files as a data source (``data.source=video_folder`` and ``video_list``):
clips the fixture encodes itself with PyAV (frame ``f`` of video ``v`` is one flat
colour, red ``10 f`` and green ``30 v``, readable after any crop and any codec),
decoded by seeking and checked against a plain decode of every frame; the clip
sampling of TFDS videos (windows, short videos, determinism, resumption, process
sharding, repeated sampling); corrupt files; pretraining from the command line."""
import os
import shutil

import numpy as np
import pytest

from conftest import run_cli, training_rows
from mae_jax import config_lib
from mae_jax.data import pipeline, sources
from mae_jax.errors import ConfigError, CorruptImageError, DataError

av = pytest.importorskip("av")
from mae_jax.data import video_files  # noqa: E402

FRAMES, STRIDE, SIZE = 4, 2, 16
SPAN = (FRAMES - 1) * STRIDE + 1
HEIGHT, WIDTH = 48, 64
# (split, class, name, frames): 6 training videos in two classes, 2 for validation;
# 5 and 3 frames are shorter than a clip's span (7)
VIDEOS = (("train", "cat", "v0.mp4", 24), ("train", "cat", "v1.mp4", 5),
          ("train", "cat", "v2.webm", 24), ("train", "dog", "v3.mp4", 13),
          ("train", "dog", "v4.avi", 24), ("train", "dog", "v5.mp4", 3),
          ("val", "cat", "v6.mp4", 24), ("val", "dog", "v7.mp4", 24))
CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def frame_pixels(video, frame):
  pixels = np.empty((HEIGHT, WIDTH, 3), np.uint8)
  pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10 * frame, 30 * video, 128
  return pixels


def encode(path, video, length):
  """``length`` frames of ``frame_pixels(video, ...)``; H.264 with a key frame every 6
  frames and B-frames (decode order differs from presentation order)."""
  ext = os.path.splitext(path)[1]
  with av.open(str(path), "w") as container:
    stream = container.add_stream(CODECS[ext], rate=25)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.codec_context.gop_size = 6
    if ext == ".avi":
      stream.codec_context.bit_rate = 4_000_000
    for f in range(length):
      frame = av.VideoFrame.from_ndarray(frame_pixels(video, f), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def read_back(clip):
  """(video index, frame indices) from the flat colours of a decoded clip."""
  clip = np.asarray(clip, float)
  video = np.round(clip[..., 1].mean() / 30)
  assert np.abs(clip[..., 1] - 30 * video).max() < 8, "one video per clip"
  frames = np.round(clip[..., 0].mean((1, 2)) / 10).astype(int)
  return int(video), frames


def all_frames(path):
  """Every frame, decoded from the start in order: the reference."""
  with av.open(str(path)) as container:
    return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  for v, (split, label, name, length) in enumerate(VIDEOS):
    os.makedirs(root / split / label, exist_ok=True)
    encode(root / split / label / name, v, length)
  (root / "train" / "cat" / "notes.txt").write_text("not a video")
  # VideoMAE's list files: relative paths in train.csv, absolute ones in val.csv
  classes = {"cat": 0, "dog": 1}
  with open(root / "train.csv", "w") as f:
    for split, label, name, _ in VIDEOS:
      if split == "train":
        f.write(f"train/{label}/{name} {classes[label]}\n")
  with open(root / "val.csv", "w") as f:
    for split, label, name, _ in VIDEOS:
      if split == "val":
        f.write(f"{root / split / label / name},{classes[label]}\n")
  return root


def files_config(root, source="video_folder", steps=2):
  c = config_lib.pretrain_defaults("tiny/4")
  config_lib.video_defaults(c, tubelet_size=2, num_frames=FRAMES)
  c.data.update(name="my_videos", source=source, data_dir=str(root), split="train",
                eval_split="val", image_size=SIZE, channels=3, num_threads=0)
  c.data.video.stride = STRIDE
  c.batch_size = 4
  c.num_train_steps = steps
  return c


def reference_windows(length):
  starts = [s for s in range(length) if s + (FRAMES - 1) * STRIDE < length] or [0]
  return {tuple(min(s + STRIDE * k, length - 1) for k in range(FRAMES)) for s in starts}


def test_seeking_decode_equals_decoding_every_frame(video_root):
  rng = np.random.default_rng(0)
  for v, (split, label, name, length) in enumerate(VIDEOS[:5]):
    path = video_root / split / label / name
    want = all_frames(path)
    file = video_files.VideoFile(str(path))
    assert len(file) == length == len(want)
    for _ in range(4):
      indices = sorted(set(rng.integers(0, length, 4).tolist()))
      got = file.decode(indices)   # opens the file again after each decode
      assert sorted(got) == indices
      for i in indices:
        np.testing.assert_array_equal(got[i], want[i], err_msg=f"{name} frame {i}")
    assert read_back(np.stack([want[i] for i in range(length)]))[0] == v
  grey = video_files.VideoFile(str(video_root / "train" / "cat" / "v0.mp4"), 1).decode([3])
  assert grey[3].shape == (HEIGHT, WIDTH, 1)
  # a decoder that reports other timestamps than the packets: frames numbered in order
  path = video_root / "train" / "cat" / "v0.mp4"
  file = video_files.VideoFile(str(path))
  file.pts = file.pts + 1
  got, want = file.decode([2, 9, 23]), all_frames(path)
  for i in (2, 9, 23):
    np.testing.assert_array_equal(got[i], want[i])


def test_decoding_a_late_clip_starts_at_its_key_frame(video_root):
  """Only the frames from the key frame before the clip on are decoded (frames 18 and
  20 of 24, key frames every 6: 18 to 20), not the 21 from the start."""
  file = video_files.VideoFile(str(video_root / "train" / "cat" / "v0.mp4"))
  assert list(file.keyframes) == [file.pts[i] for i in (0, 6, 12, 18)]
  assert sorted(file.decode([18, 20])) == [18, 20]
  assert file.frames_decoded <= 6, file.frames_decoded
  file = video_files.VideoFile(str(video_root / "train" / "cat" / "v0.mp4"))
  assert sorted(file.decode([1, 13])) == [1, 13]   # a key frame between: seeks again
  assert file.frames_decoded <= 2 + 6, file.frames_decoded


def test_folder_source_classes_labels_and_centred_windows(video_root):
  source = pipeline.open_checked(files_config(video_root).data, "train")[0]
  assert isinstance(source, sources.VideoFolderSource)
  train = [v for v in VIDEOS if v[0] == "train"]
  assert len(source) == len(train) and source.num_classes == 2 and source.channels == 3
  assert [os.path.basename(p) for p, _ in source.samples] == [v[2] for v in train]
  assert [label for _, label in source.samples] == [0, 0, 0, 1, 1, 1]
  for i in range(len(source)):
    record = source[i]
    clip = np.asarray(record["image"])
    length = train[i][3]
    assert clip.shape == (FRAMES, HEIGHT, WIDTH, 3) and clip.dtype == np.uint8
    start = max(length - SPAN, 0) // 2
    want = np.minimum(start + STRIDE * np.arange(FRAMES), length - 1)
    video, frames = read_back(clip)
    assert video == i and list(frames) == list(want), (i, frames, want)


def test_list_source_equals_the_folder_source(video_root):
  folder = pipeline.open_checked(files_config(video_root).data, "train")[0]
  listed = pipeline.open_checked(files_config(video_root, "video_list").data, "train")[0]
  assert isinstance(listed, video_files.VideoListSource)
  assert [(os.path.realpath(p), l) for p, l in listed.samples] == \
         [(os.path.realpath(p), l) for p, l in folder.samples]
  assert listed.num_classes == 2
  val = pipeline.open_checked(files_config(video_root, "video_list").data, "val")[0]
  assert [read_back(np.asarray(val[i]["image"]))[0] for i in range(2)] == [6, 7]
  c = files_config(video_root)
  c.data.eval_split = "val"
  images, labels = pipeline.eval_arrays(c.data, "val")
  assert images.shape == (2, FRAMES, SIZE, SIZE, 3) and list(labels) == [0, 1]


def test_list_and_folder_errors_say_what_to_change(video_root, tmp_path):
  lists = tmp_path / "lists"
  lists.mkdir()
  (lists / "train.txt").write_text("# path label\n\nclip one.mp4 3\nclip_two.mp4\n")
  c = files_config(lists, "video_list")
  with pytest.raises(DataError, match=r"train.txt, line 4: 'clip_two.mp4' is not 'path label'"):
    pipeline.open_checked(c.data, "train")
  (lists / "train.txt").write_text("clip one.mp4 3\n")
  source = pipeline.open_checked(c.data, "train")[0]
  assert source.samples == [(str(lists / "clip one.mp4"), 3)] and source.num_classes == 4
  with pytest.raises(CorruptImageError, match=r"clip one.mp4 cannot be decoded as a video "
                     r"\(no such file\).*skip_corrupt=True"):
    source[0]
  with pytest.raises(DataError, match=r"val.csv nor .txt exists.*data.eval_split"):
    pipeline.open_checked(c.data, "val")
  c.data.data_dir = ""
  with pytest.raises(ConfigError, match="video_list needs --config.data.data_dir"):
    pipeline.open_checked(c.data, "train")
  c = files_config(video_root)
  with pytest.raises(DataError, match=r"test is not a folder: data.source=video_folder "
                     r"reads DATA_DIR/<split>/<class>/<video>"):
    pipeline.open_checked(c.data, "test")
  del c.data["video"]
  with pytest.raises(ConfigError, match="needs a data.video section"):
    pipeline.open_checked(c.data, "train")
  c = files_config(video_root, "video_files")
  with pytest.raises(DataError, match="video_files.*unknown; choose.*video_folder, video_list"):
    pipeline.open_checked(c.data, "train")


def test_lists_folders_and_videos_on_gcs_give_the_local_clips(video_root, gcs):
  """The list file, the folders and the videos in a bucket (read through seekable
  file objects): the same samples, labels and clips as on the local disk."""
  from mae_jax import fileio
  for path in sorted(video_root.rglob("*")):
    if path.is_file():
      fileio.write_bytes(gcs.path("videos", str(path.relative_to(video_root))),
                         path.read_bytes())
  for source in ("video_list", "video_folder"):
    local = pipeline.open_checked(files_config(video_root, source).data, "train")[0]
    remote = pipeline.open_checked(files_config(gcs.path("videos"), source).data, "train")[0]
    assert [l for _, l in remote.samples] == [l for _, l in local.samples]
    assert all(p.startswith("gs://") for p, _ in remote.samples), remote.samples
    for i in (0, 3):
      np.testing.assert_array_equal(np.asarray(remote[i]["image"]),
                                    np.asarray(local[i]["image"]))


def batches(config, n, seed=0, **kwargs):
  it = pipeline.train_iterator(config.data, global_batch=config.batch_size, seed=seed,
                               **kwargs)
  return [next(it) for _ in range(n)]


def test_training_clips_are_the_tfds_paths_windows_deterministic_and_resumable(video_root):
  """The sampling of ``test_video_tfds``: each clip a window of its video, a new one
  every epoch; the same batches again for a seed; a restored iterator goes on where
  it stopped; two processes read the halves of the same global batches."""
  config = files_config(video_root)
  lengths = [v[3] for v in VIDEOS if v[0] == "train"]
  first = batches(config, 6, seed=1)
  seen = {}
  for batch in first:
    assert batch["image"].shape == (4, FRAMES, SIZE, SIZE, 3)
    for clip, label in zip(batch["image"], batch["label"]):
      video, frames = read_back(clip)
      assert label == video // 3
      assert tuple(frames) in reference_windows(lengths[video]), (video, frames)
      seen.setdefault(video, set()).add(tuple(frames))
  assert set(seen) == set(range(6)) and len(seen[0]) > 1
  for a, b in zip(first, batches(config, 6, seed=1)):
    np.testing.assert_array_equal(a["image"], b["image"])
  it = pipeline.train_iterator(config.data, global_batch=4, seed=1)
  for _ in range(3):
    next(it)
  resumed = pipeline.train_iterator(config.data, global_batch=4, seed=1)
  resumed.set_state(it.get_state())
  for want in first[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  halves = [batches(config, 6, seed=1, process_index=p, process_count=2) for p in (0, 1)]
  for k, want in enumerate(first):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][k]["image"], halves[1][k]["image"]]), want["image"])
  config.data.repeated_sampling = 2
  videos = [read_back(clip)[0] for b in batches(config, 3) for clip in b["image"]]
  assert videos[0::2] == videos[1::2] and sorted(videos[0::2]) == list(range(6))


@pytest.fixture(scope="module")
def corrupt_root(video_root, tmp_path_factory):
  root = tmp_path_factory.mktemp("videos_corrupt")
  shutil.copytree(video_root, root, dirs_exist_ok=True)
  data = (root / "train" / "dog" / "v3.mp4").read_bytes()
  (root / "train" / "dog" / "broken.mp4").write_bytes(data[:40] + b"\x00junk" * 50)
  return root


def test_corrupt_video_stops_with_its_name_or_is_skipped(corrupt_root, caplog):
  broken = str(corrupt_root / "train" / "dog" / "broken.mp4")
  config = files_config(corrupt_root)
  config.batch_size = 7   # every video of the split
  with pytest.raises(CorruptImageError, match=f"{broken} cannot be decoded as a video"):
    next(pipeline.train_iterator(config.data, global_batch=7, seed=0))
  config.data.skip_corrupt = True
  batch = next(pipeline.train_iterator(config.data, global_batch=7, seed=0))
  assert batch["image"].shape == (7, FRAMES, SIZE, SIZE, 3)
  assert "skipped undecodable image" in caplog.text and broken in caplog.text
  _, eval_batches = pipeline.eval_batches(config.data, "train", global_batch=7)
  assert int(next(eval_batches())["valid"].sum()) == 6


# ------------------------------------------------------------------ the command line


def cli_args(root, source, workdir, steps):
  return ["pretrain", f"--config=configs/pretrain_video_kinetics.py:runlocal,source={source}",
          f"--workdir={workdir}", f"--config.data.data_dir={root}",
          "--config.data.image_size=16", f"--config.data.video.stride={STRIDE}",
          "--config.data.repeated_sampling=2", "--config.batch_size=4",
          f"--config.num_train_steps={steps}",
          "--config.checkpoint.every_steps=2", "--config.checkpoint.async_save=False",
          "--config.eval_every_steps=4", "--config.model.patch_size=4"]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["video_folder", "video_list"])
def test_pretrain_from_video_files_and_resume_exactly(video_root, tmp_path, source):
  """Four steps in one run equal two steps, then two more after a resume."""
  run_cli(*cli_args(video_root, source, tmp_path / "full", 4), timeout=600, check=True)
  full = training_rows(tmp_path / "full")
  assert [r["step"] for r in full] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in full)
  assert os.listdir(tmp_path / "full" / "recon")
  run_cli(*cli_args(video_root, source, tmp_path / "split", 2), check=True)
  proc = run_cli(*cli_args(video_root, source, tmp_path / "split", 4), check=True)
  assert "resumed from step 2" in proc.stdout + proc.stderr
  split = training_rows(tmp_path / "split")
  np.testing.assert_array_equal([r["loss"] for r in split], [r["loss"] for r in full])
  if source == "video_folder":  # the reconstruction strips of a video model
    out = tmp_path / "clips.png"
    proc = run_cli("visualize", f"--workdir={tmp_path / 'full'}", f"--out={out}",
                   "--num_images=2", check=True)
    assert out.exists() and "rows: original" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cli_corrupt_video_is_one_error_line_and_skip_option_trains(corrupt_root, tmp_path):
  broken = str(corrupt_root / "train" / "dog" / "broken.mp4")
  args = cli_args(corrupt_root, "video_folder", tmp_path / "stop", 1)
  args += ["--config.batch_size=7", "--config.data.repeated_sampling=1",  # every video
           "--config.checkpoint.every_steps=1"]
  proc = run_cli(*args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and broken in lines[0], lines
  assert "Traceback" not in proc.stderr + proc.stdout
  args[2] = f"--workdir={tmp_path / 'skip'}"
  proc = run_cli(*args, "--config.data.skip_corrupt=True", check=True)
  assert "skipped undecodable image" in proc.stdout + proc.stderr
