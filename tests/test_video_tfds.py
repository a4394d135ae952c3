"""Clips from a TFDS video dataset built by TFDS itself (``mae_synthetic_video``, PNG
frames whose pixels say their frame and clip index): which frames a clip takes, one
crop and flip per clip, determinism, resumption, process sharding, repeated sampling,
errors, and video pretraining from it."""
import json
import os

import numpy as np
import pytest

from conftest import SYNTHETIC_VIDEO, load_config, run_cli, synthetic_frames, \
    synthetic_video_tfds
from mae_jax import config_lib
from mae_jax.data import pipeline, video
from mae_jax.errors import ConfigError, DataError

FRAMES, STRIDE, SIZE = 4, 2, 8
SPAN = (FRAMES - 1) * STRIDE + 1   # 7 frames from the first to the last of a clip
LENGTHS = (5, 9, 12, 20, 3, 16, 7, 11, 30, 8, 13, 6)   # 5, 3 and 6 are shorter than SPAN


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("video_tfds"))
  synthetic_video_tfds(data_dir, LENGTHS)
  return data_dir


def video_config(data_dir, steps=2):
  c = config_lib.pretrain_defaults("tiny/4")
  config_lib.video_defaults(c, tubelet_size=2, num_frames=FRAMES)
  c.data.update(name=SYNTHETIC_VIDEO, source="tfds", data_dir=data_dir, split="train",
                eval_split="test", image_size=SIZE, channels=3, num_threads=0)
  c.data.video.stride = STRIDE
  c.model.update(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                 decoder_depth=1, decoder_num_heads=2, dtype="float32")
  c.batch_size = 4
  c.num_train_steps = steps
  c.optim.warmup_steps = 1
  c.checkpoint.update(every_steps=steps, keep=1, async_save=False)
  c.log_every_steps, c.eval_every_steps, c.num_recon_images = 1, 0, 2
  return c


def decode(clip):
  """(clip index, frame indices) read back from the pixels of a sampled clip."""
  frame, index = clip[..., 0].astype(int), clip[..., 1].astype(int)
  assert (frame == frame[:, :1, :1]).all() and (index == index.flat[0]).all()
  return int(index.flat[0]), frame[:, 0, 0]


def reference_windows(length):
  """Every clip a video of ``length`` frames can give in training, by brute force:
  frames start, start+STRIDE, ... for each start whose last frame is in the video, or
  (video too short) from frame 0 with the last frame repeated."""
  starts = [s for s in range(length) if s + (FRAMES - 1) * STRIDE < length] or [0]
  return {tuple(min(s + STRIDE * k, length - 1) for k in range(FRAMES)) for s in starts}


def test_clip_indices_against_brute_force():
  for length in range(1, 20):
    got = {tuple(video.clip_indices(length, FRAMES, STRIDE, s))
           for s in range(video.num_windows(length, FRAMES, STRIDE))}
    assert got == reference_windows(length), length
    centre = video.clip_indices(length, FRAMES, STRIDE,
                                video.centre_start(length, FRAMES, STRIDE))
    if length >= SPAN:  # equal margins before and after, up to one frame
      before, after = centre[0], length - 1 - centre[-1]
      assert before in (after, after - 1), (length, centre)


def test_source_reads_labels_and_the_centred_window(video_dir):
  source = pipeline.open_checked(video_config(video_dir).data, "train")[0]
  assert len(source) == len(LENGTHS) and source.num_classes == 3 and source.channels == 3
  indices = []
  for record in (source[r] for r in range(len(source))):  # TFDS stores them shuffled
    clip = np.asarray(record["image"])
    assert clip.shape == (FRAMES, 16, 20, 3) and clip.dtype == np.uint8
    i = decode(clip)[0]
    length = LENGTHS[i]
    assert record["label"] == i % 3
    start = max(length - SPAN, 0) // 2
    want = np.minimum(start + STRIDE * np.arange(FRAMES), length - 1)
    np.testing.assert_array_equal(clip, synthetic_frames(i, length)[want])
    indices.append(i)
  assert sorted(indices) == list(range(len(LENGTHS)))


def batches(config, n, seed=0, **kwargs):
  it = pipeline.train_iterator(config.data, global_batch=config.batch_size, seed=seed,
                               **kwargs)
  return [next(it) for _ in range(n)]


def test_training_clips_windows_one_crop_per_clip(video_dir):
  config = video_config(video_dir)
  out = batches(config, 12, seed=3)
  seen = {}
  for batch in out:
    assert batch["image"].shape == (4, FRAMES, SIZE, SIZE, 3)
    for clip, label in zip(batch["image"], batch["label"]):
      index, frames = decode(clip)
      assert label == index % 3
      assert tuple(frames) in reference_windows(LENGTHS[index]), (index, frames)
      seen.setdefault(index, set()).add(tuple(frames))
      # channel 2 of every frame: the same crop box and flip on all of them
      assert (clip[..., 2] == clip[:1, ..., 2]).all()
  assert set(seen) == set(range(len(LENGTHS)))  # 4 epochs: every clip, reshuffled
  assert len(seen[8]) > 1  # the 30-frame video gives different windows across epochs
  crops = {out[0]["image"][i, 0, ..., 2].tobytes() for i in range(4)}
  assert len(crops) > 1


def test_deterministic_resumable_and_process_independent(video_dir):
  config = video_config(video_dir)
  first = batches(config, 6, seed=1)
  again = batches(config, 6, seed=1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  other = batches(config, 1, seed=2)
  assert not np.array_equal(other[0]["image"], first[0]["image"])
  # resume: restore the iterator state after 3 batches
  it = pipeline.train_iterator(config.data, global_batch=4, seed=1)
  for _ in range(3):
    next(it)
  state = it.get_state()
  resumed = pipeline.train_iterator(config.data, global_batch=4, seed=1)
  resumed.set_state(state)
  for want in first[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # two processes read the two halves of the same global batches
  halves = [batches(config, 6, seed=1, process_index=p, process_count=2) for p in (0, 1)]
  for k, want in enumerate(first):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][k]["image"], halves[1][k]["image"]]), want["image"])


def test_repeated_sampling_gives_each_clip_r_augmented_copies(video_dir):
  config = video_config(video_dir)
  config.data.repeated_sampling = 2
  assert config_lib.steps_per_epoch(config) == len(LENGTHS) * 2 // 4
  out = batches(config, 6, seed=0)
  indices = [decode(clip)[0] for b in out for clip in b["image"]]
  assert indices[0::2] == indices[1::2]  # copies in a row, in the same batch
  # an epoch is one pass over the videos: 12 videos x 2 copies = 6 batches
  assert sorted(indices[0::2]) == list(range(len(LENGTHS)))
  differ = [not np.array_equal(b["image"][i], b["image"][i + 1])
            for b in out for i in (0, 2)]
  assert sum(differ) >= len(differ) - 1  # each copy its own window / crop / flip
  config.data.repeated_sampling = 3
  with pytest.raises(ConfigError, match="multiple of data.repeated_sampling=3"):
    batches(config, 1)


def test_errors_name_what_to_change(video_dir, tmp_path):
  config = video_config(video_dir)
  config.data.video.video_key = "clip"
  with pytest.raises(DataError, match=r"video_key='clip' is not a feature of .*"
                     r"features: label, video\); set --config.data.video.video_key=video"):
    pipeline.open_checked(config.data, "train")
  config.data.video.video_key = "label"
  with pytest.raises(DataError, match="'label' is not a video feature of"):
    pipeline.open_checked(config.data, "train")
  config = video_config(video_dir)
  config.data.image_size = 32
  with pytest.raises(DataError, match=r"frames are 16x20 pixels, smaller than "
                     r"data.image_size=32; set --config.data.image_size=16"):
    pipeline.open_checked(config.data, "train")
  config = video_config(str(tmp_path / "empty"))
  with pytest.raises(DataError, match="is not available.*mae-jax prepare"):
    pipeline.open_checked(config.data, "train")


@pytest.mark.slow
def test_pretrain_two_steps_from_the_tfds_videos_cli_and_bad_key(video_dir, tmp_path):
  """`mae-jax pretrain` on the TFDS clips: two finite steps, a checkpoint and the
  reconstruction strip; a wrong video key is one error line."""
  flags = [f"--config.data.name={SYNTHETIC_VIDEO}", "--config.data.source=tfds",
           f"--config.data.data_dir={video_dir}", "--config.data.image_size=16",
           "--config.data.channels=3", "--config.model.patch_size=4",
           f"--config.data.video.stride={STRIDE}",
           "--config.data.eval_split=test", "--config.num_train_steps=2",
           "--config.probe.enabled=False", "--config.eval_every_steps=2",
           "--config.data.repeated_sampling=2"]
  workdir = tmp_path / "run"
  run_cli("pretrain", "--config=configs/pretrain_video_kinetics.py:runlocal",
          f"--workdir={workdir}", *flags, timeout=600, check=True)
  with open(workdir / "metrics.jsonl") as f:
    rows = [r for r in map(json.loads, f) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
  assert "2" in os.listdir(workdir / "checkpoints")
  assert os.listdir(workdir / "recon")
  proc = run_cli("pretrain", "--config=configs/pretrain_video_kinetics.py:runlocal",
                 f"--workdir={tmp_path / 'bad'}", *flags, "--config.data.video.video_key=vid",
                 timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "video_key='vid'" in lines[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_kinetics_config_recipe_and_runlocal(tmp_path, fmnist_available):
  """configs/pretrain_video_kinetics.py: MAE-ST's recipe, and its runlocal switch
  trains two steps on moving Fashion-MNIST with repeated sampling."""
  from mae_jax.train import pretrain
  full = load_config("pretrain_video_kinetics")
  assert full.model.name == "L/16" and full.model.tubelet_size == 2
  assert (full.data.video.num_frames, full.data.video.stride) == (16, 4)
  assert full.model.mask_ratio == 0.9 and full.model.masking == "random"
  assert (full.model.decoder_embed_dim, full.model.decoder_depth) == (512, 4)
  assert full.data.repeated_sampling == 4 and full.batch_size == 512
  # mae_st's lr: blr 1.6e-3 x 128 videos / 256 at 512 clips
  from mae_jax.train import optim
  assert optim.peak_lr(full.optim, full.batch_size) == pytest.approx(1.6e-3 * 128 / 256)
  assert (full.optim.b1, full.optim.b2, full.optim.weight_decay) == (0.9, 0.95, 0.05)
  config = load_config("pretrain_video_kinetics", "runlocal")
  config.checkpoint.async_save = False
  results = pretrain.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 2 and np.isfinite(results["recon_loss"])
