"""Workdirs, weights and data on ``gs://``, against a local GCS emulator (fake-gcs-server,
started by the ``gcs_server`` fixture): the commands a pod runs, with the real clients
(gcsfs, TensorStore, ArrayRecord's reader) pointed at the emulator."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, run_cli, synthetic_jpeg_tfds
from gcs_emulator import pointed_at

# A schedule that does not depend on the run length (warmup 0, min_lr = peak, both
# exact in binary), so runs of different lengths follow one trajectory.
CONSTANT_LR = ["--config.optim.warmup_steps=0", "--config.optim.base_lr=0.0009765625",
               "--config.optim.min_lr=0.0001220703125"]          # 2**-10 * 32 / 256
TIMEOUT = 900  # seconds for one command (about 30 on an idle 2-core machine)
PRETRAIN = ["pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS, *CONSTANT_LR,
            "--config.checkpoint.every_steps=4", "--config.monitor.every_steps=0"]


def cli(*args):
  return run_cli(*args, check=True, timeout=TIMEOUT)


def read_rows(path):
  from mae_jax import fileio
  return [json.loads(line) for line in fileio.read_text(path).splitlines()]


def scalar_events(event_bytes: bytes, tmp_path, tag: str) -> dict:
  """``{step: value}`` of ``tag`` in an event file, read with TensorFlow's reader."""
  import tensorflow as tf
  local = tmp_path / f"events_{len(list(tmp_path.iterdir()))}"
  local.write_bytes(event_bytes)
  out = {}
  for event in tf.compat.v1.train.summary_iterator(str(local)):
    for value in event.summary.value:
      if value.tag == tag:
        out[event.step] = value.simple_value
  return out


def upload(local_dir: str, url: str) -> None:
  from mae_jax import fileio
  for root, _, files in os.walk(local_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), local_dir)
      with open(os.path.join(root, name), "rb") as f:
        fileio.write_bytes(fileio.join(url, rel.replace(os.sep, "/")), f.read())


# ----------------------------------------------------------------- the file layer


def test_file_layer_behaves_the_same_locally_and_on_gcs(gcs, tmp_path):
  from mae_jax import fileio
  for root in (str(tmp_path / "local"), gcs.path("layer")):
    a = fileio.join(root, "sub", "a.json")
    fileio.write_json(a, {"x": 1})                        # parents are created
    assert fileio.exists(a) and fileio.isfile(a) and not fileio.isdir(a)
    assert fileio.isdir(fileio.join(root, "sub"))
    assert json.loads(fileio.read_text(a)) == {"x": 1}
    assert fileio.glob(fileio.join(root, "sub"), "*.json") == [a]
    grow = fileio.join(root, "grow.txt")
    f = fileio.GrowingFile(grow)
    f.write(b"one\n")
    f.flush()
    assert fileio.read_bytes(grow) == b"one\n"
    f.write(b"two\n")
    f.close()
    again = fileio.GrowingFile(grow)                      # continues the file
    again.write(b"three\n")
    again.close()
    assert fileio.read_bytes(grow) == b"one\ntwo\nthree\n"
    fileio.GrowingFile(grow, initial=b"kept\n").close()   # starts from given content
    assert fileio.read_bytes(grow) == b"kept\n"
    fileio.remove(a)
    assert not fileio.exists(a)


def test_a_bucket_that_cannot_be_used_is_one_line_naming_it_and_the_cause(gcs, tmp_path):
  """No such bucket (the emulator answers 404), and no route to the storage endpoint:
  one line, within seconds, instead of gcsfs's ~90 s of retries."""
  from mae_jax import fileio
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
                 "--workdir=gs://no-such-bucket-here/w")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: --workdir=gs://no-such-bucket-here/w: bucket "
                             "'no-such-bucket-here' cannot be used"), lines[0]
  assert "it does not exist" in lines[0], lines[0]
  fileio.check_bucket(gcs.path("w"), "--workdir")  # the emulator's bucket is fine
  with pytest.raises(Exception, match=r"--out=gs://b/x: bucket 'b' cannot be reached: no "
                     r"connection to 127.0.0.1:9 .*STORAGE_EMULATOR_HOST"):
    os.environ["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:9"  # (monkeypatched by gcs)
    fileio.check_bucket("gs://b/x", "--out")


def test_workdir_files_go_to_the_bucket_not_a_local_folder(gcs, tmp_path, monkeypatch):
  from mae_jax.train import metrics
  monkeypatch.chdir(tmp_path)
  writer = metrics.MetricWriter(gcs.path("w"))
  writer.scalars(1, {"loss": 2.0})
  writer.scalars(2, {"loss": 1.5})
  writer.close()
  assert [r["loss"] for r in read_rows(gcs.path("w", "metrics.jsonl"))] == [2.0, 1.5]
  assert os.listdir(tmp_path) == []                      # no local "gs:" folder
  resumed = metrics.MetricWriter(gcs.path("w"), resume_step=1)  # drops step 2
  resumed.scalars(2, {"loss": 1.25})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in read_rows(gcs.path("w", "metrics.jsonl"))] == [
      (1, 2.0), (2, 1.25)]


def test_workdir_lock_on_gcs_excludes_a_second_run_and_takes_over_a_dead_ones(gcs):
  """The lock is one exclusive create on the bucket: of 8 writers racing exactly one
  wins; a second run is refused naming the holder; a lock whose pid is gone on this
  host is taken over; release removes it."""
  import concurrent.futures
  import socket
  from mae_jax import fileio
  from mae_jax.workdir import LOCK_FILE, WorkdirLock
  race = gcs.path("race", "x")
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    won = list(pool.map(lambda i: fileio.create_exclusive(race, str(i).encode()), range(8)))
  assert sum(won) == 1 and fileio.read_text(race) == str(won.index(True))

  workdir = gcs.path("locked")
  first, second = WorkdirLock(workdir), WorkdirLock(workdir)
  assert first.acquire() is None and fileio.exists(fileio.join(workdir, LOCK_FILE))
  why = second.acquire()
  assert why and f"pid {os.getpid()} on {socket.gethostname()}" in why and workdir in why
  first.release()
  assert not fileio.exists(fileio.join(workdir, LOCK_FILE))

  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  fileio.write_json(fileio.join(workdir, LOCK_FILE),
                    {"host": socket.gethostname(), "pid": dead.pid, "since": "earlier"})
  assert second.acquire() is None and second.held
  holder = json.loads(fileio.read_text(fileio.join(workdir, LOCK_FILE)))
  assert holder["pid"] == os.getpid()
  second.release()


# ----------------------------------------------------------------- pretraining on gs://


def _start(workdir: str, *extra) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "mae_jax", *PRETRAIN, f"--workdir={workdir}",
                           *extra], cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_rows(proc, path: str, past_step: int) -> None:
  """Until ``path`` holds a row past ``past_step`` (the writer flushes a remote file
  before each checkpoint, so checkpoint ``past_step - 4`` is then complete)."""
  from mae_jax import fileio
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    if fileio.exists(path) and any(r["step"] > past_step for r in read_rows(path)):
      return
    time.sleep(0.2)
  proc.kill()
  raise AssertionError(f"no row past step {past_step} in {path}")


@pytest.mark.slow
def test_pretrain_on_gcs_killed_and_resumed_follows_the_uninterrupted_run(gcs, tmp_path,
                                                                          fmnist_available):
  import mae_jax
  from mae_jax import fileio
  split, full = gcs.path("split"), gcs.path("full")
  proc = _start(split, "--config.num_train_steps=100000")
  _wait_for_rows(proc, fileio.join(split, "metrics.jsonl"), 8)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  killed_rows = read_rows(fileio.join(split, "metrics.jsonl"))
  resume_at = mae_jax.load(split).step           # the latest complete checkpoint
  assert resume_at >= 4 and resume_at % 4 == 0
  total = resume_at + 4
  resumed = cli(*PRETRAIN, f"--workdir={split}", f"--config.num_train_steps={total}")
  assert f"resumed from step {resume_at}" in resumed.stdout
  cli(*PRETRAIN, f"--workdir={full}", f"--config.num_train_steps={total}")

  got, want = (read_rows(fileio.join(w, "metrics.jsonl")) for w in (split, full))
  assert [r["step"] for r in got] == list(range(1, total + 1)), (
      [r["step"] for r in killed_rows], resume_at)   # rows past the checkpoint were redone
  for key in ("loss", "grad_norm", "lr"):
    np.testing.assert_array_equal([r[key] for r in got], [r[key] for r in want], key)

  # everything a workdir holds is in the bucket
  for name in ("config.json", f"recon/step_{total:07d}.png", "eval.json"):
    assert fileio.exists(fileio.join(split, name)), name
  assert json.loads(fileio.read_text(fileio.join(split, "config.json")))["num_train_steps"] \
      == total
  assert mae_jax.load(split).step == total
  checkpoints = fileio.glob(fileio.join(split, "checkpoints"), "*")
  assert max(int(os.path.basename(p)) for p in checkpoints) == total, checkpoints
  assert not [p for p in checkpoints if "tmp" in p], checkpoints
  # TensorBoard: one event file per run; the resumed run's holds its steps, and every
  # loss in either file up to the end is the one metrics.jsonl holds for that step (the
  # killed run's file holds what its writer had flushed when it died, perhaps steps past
  # the end, perhaps nothing)
  events = fileio.glob(fileio.join(split, "tensorboard"), "events.out.tfevents.*")
  assert len(events) == 2, events
  losses = {}
  for path in events:
    losses.update(scalar_events(fileio.read_bytes(path), tmp_path, "loss"))
  logged = [s for s in sorted(losses) if s <= total]
  assert set(range(resume_at + 1, total + 1)) <= set(logged), sorted(losses)
  np.testing.assert_allclose([losses[s] for s in logged],
                             [got[s - 1]["loss"] for s in logged], rtol=1e-6)


# ----------------------------------------------------------------- the tools on gs://


@pytest.fixture(scope="module")
def gcs_module(gcs_server):
  with pytest.MonkeyPatch.context() as mp:
    yield pointed_at(gcs_server, mp, "tools")


@pytest.fixture(scope="module")
def pretrained(gcs_module, fmnist_available):
  workdir = gcs_module.path("pretrained")
  cli(*PRETRAIN, f"--workdir={workdir}", "--config.num_train_steps=4")
  return workdir


def test_export_and_import_through_the_bucket(gcs_module, pretrained, tmp_path):
  import mae_jax
  import torch
  from mae_jax import export, fileio
  out, back = gcs_module.path("export", "mae.pth"), gcs_module.path("imported")
  cli("export", f"--workdir={pretrained}", "--format=official", f"--out={out}")
  cli("import", f"--in={out}", "--format=official", f"--workdir={back}")
  original, imported = mae_jax.load(pretrained), mae_jax.load(back)
  for a, b in zip(jax.tree.leaves(original.params), jax.tree.leaves(imported.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the .pth in the bucket, read by torch itself
  state = torch.load(io.BytesIO(fileio.read_bytes(out)), weights_only=True)["model"]
  np.testing.assert_array_equal(state["cls_token"].numpy(),
                                np.asarray(original.params["cls_token"]))
  assert json.loads(fileio.read_text(gcs_module.path("export", "mae.json")))["depth"] == 1
  # a folder format (timm: safetensors + config.json) written to and read from the bucket
  folder = gcs_module.path("export", "timm")
  export.save(original.params, original.config, "timm", folder)
  sd, _, _ = export.load_file(folder, "timm")
  np.testing.assert_array_equal(sd["cls_token"], state["cls_token"].numpy())


def test_visualize_writes_the_grid_to_the_bucket(gcs_module, pretrained):
  from PIL import Image
  from mae_jax import fileio, viz
  out = gcs_module.path("viz", "grid.png")
  cli("visualize", f"--workdir={pretrained}", f"--out={out}", "--num_images=3")
  image = Image.open(io.BytesIO(fileio.read_bytes(out)))
  scale = viz.default_scale(28)   # 4 columns, 3 rows below the column titles
  assert image.size[0] == (4 * 30 + 2) * scale
  assert (3 * 30 + 2) * scale < image.size[1] < (3 * 30 + 2) * scale + 100


def test_linprobe_from_a_bucket_workdir_into_a_bucket_workdir(gcs_module, pretrained):
  import mae_jax
  from mae_jax import checkpoint_io, fileio
  probe = gcs_module.path("probe")
  cli("linprobe", "--config=configs/linprobe_fmnist.py:steps=4", f"--workdir={probe}",
      f"--config.init_from={pretrained}", "--config.model.embed_dim=32",
      "--config.model.depth=1", "--config.model.num_heads=2", "--config.model.patch_size=7",
      "--config.batch_size=32", "--config.data.eval_max_examples=64",
      "--config.log_every_steps=1")
  saved = json.loads(fileio.read_text(fileio.join(probe, "eval.json")))
  assert saved["step"] == 4 and 0.0 <= saved["top1"] <= 1.0
  steps = [r["step"] for r in read_rows(fileio.join(probe, "metrics.jsonl"))]
  assert steps[:4] == [1, 2, 3, 4]
  probe_params, step = checkpoint_io.restore_params(
      probe, None, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  mae_params = mae_jax.load(pretrained).params
  assert step == 4
  for a, b in zip(jax.tree.leaves(probe_params["blocks_0"]),
                  jax.tree.leaves(mae_params["blocks_0"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the encoder is frozen


def test_finetune_from_a_bucket_workdir_into_a_bucket_workdir_and_resume(gcs_module,
                                                                        pretrained):
  """Fine-tuning reads init_from from the bucket, keeps its best and latest checkpoints
  there, resumes from it, and `mae-jax evaluate` scores it from the bucket."""
  from mae_jax import fileio
  ft = gcs_module.path("finetune")
  flags = ["--config.model.embed_dim=32", "--config.model.depth=1",
           "--config.model.num_heads=2", "--config.model.patch_size=7",
           "--config.batch_size=32", "--config.data.eval_max_examples=64",
           "--config.log_every_steps=1", "--config.checkpoint.every_steps=2",
           f"--config.init_from={pretrained}"]
  cli("finetune", "--config=configs/finetune_fmnist.py:steps=4", f"--workdir={ft}",
      "--config.num_train_steps=2", *flags)
  proc = cli("finetune", "--config=configs/finetune_fmnist.py:steps=4", f"--workdir={ft}",
             *flags)
  assert "resumed from step 2" in proc.stdout, proc.stdout[-2000:]
  saved = json.loads(fileio.read_text(fileio.join(ft, "eval.json")))
  assert saved["step"] == 4 and saved["best_checkpoint"].startswith("gs://")
  assert [r["step"] for r in read_rows(fileio.join(ft, "metrics.jsonl"))
          if "loss" in r] == [1, 2, 3, 4]
  cli("evaluate", "--config=configs/finetune_fmnist.py:steps=4", f"--workdir={ft}", *flags)
  scored = json.loads(fileio.read_text(fileio.join(ft, "eval.json")))
  assert (scored["step"], scored["top1"]) == (4, saved["top1"])


def test_analysis_report_goes_to_the_bucket(gcs_module, pretrained):
  from mae_jax import fileio
  out = gcs_module.path("analysis")
  cli("analyze", f"--workdir={pretrained}", f"--out={out}", "--num_images=8",
      "--jacobian_images=1", "--mask_ratios=0.75", "--num_train=100")
  assert "## 1. Attention" in fileio.read_text(fileio.join(out, "report.md"))
  files = json.loads(fileio.read_text(fileio.join(out, "analysis.json")))["files"]
  pngs = [name for names in files.values() for name in names]
  assert pngs and all(fileio.exists(fileio.join(out, name)) for name in pngs)


# ----------------------------------------------------------------- data on gs://


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory, gcs_module):
  root = str(tmp_path_factory.mktemp("jpeg_gcs"))
  bench = synthetic_jpeg_tfds(root)
  remote = gcs_module.path("tfds")
  upload(os.path.join(root, "tfds"), remote)
  return bench, root, remote


def test_array_record_dataset_reads_from_the_bucket(jpeg_dataset):
  """TFDS + ArrayRecord + grain on ``gs://``: the same records and the same training
  batches as from the local copy."""
  from mae_jax.data import pipeline, sources
  bench, root, remote = jpeg_dataset
  local = sources.TfdsSource(bench.DATASET, "train", os.path.join(root, "tfds"), False)
  cloud = sources.TfdsSource(bench.DATASET, "train", remote, False)
  assert len(cloud) == len(local) == 12
  for i in (0, 5, 11):
    assert cloud[i]["image"].data == local[i]["image"].data
    assert cloud[i]["label"] == local[i]["label"]
  config = bench.grain_config(root)
  config["image_size"] = 32
  batches = []
  for data_dir in (config["data_dir"], remote):
    it = pipeline.train_iterator(type(config)(config, data_dir=data_dir), global_batch=4,
                                 seed=1)
    batches.append([next(it)["image"] for _ in range(2)])
  for a, b in zip(*batches):
    np.testing.assert_array_equal(a, b)


def test_missing_dataset_in_a_bucket_is_one_clear_error(jpeg_dataset, gcs_module):
  from mae_jax.data import sources
  from mae_jax.errors import DataError
  bench, _, _ = jpeg_dataset
  with pytest.raises(DataError, match="data_dir gs://.*is not available"):
    sources.TfdsSource(bench.DATASET, "train", gcs_module.path("empty"), False)


def test_tfrecord_dataset_in_the_bucket_converts_to_the_array_record_one(
    jpeg_dataset, gcs_module, tmp_path_factory):
  """A dataset TFDS prepared as TFRecord (most existing buckets) is refused with the
  command that fixes it; `mae-jax prepare --convert` on the bucket then gives the same
  records, in the same order, as the dataset built as ArrayRecord."""
  from mae_jax import fileio
  from mae_jax.data import sources
  from mae_jax.errors import DataError
  bench, root, built = jpeg_dataset
  old_root = str(tmp_path_factory.mktemp("jpeg_tfrecord"))
  synthetic_jpeg_tfds(old_root, file_format="tfrecord")
  remote = gcs_module.path("tfds_tfrecord")
  upload(os.path.join(old_root, "tfds"), remote)
  with pytest.raises(DataError, match=f"stored as tfrecord.*mae-jax prepare --dataset="
                     f"{bench.DATASET} --data_dir={remote} --convert"):
    sources.TfdsSource(bench.DATASET, "train", remote, False)
  version_dir = fileio.join(remote, bench.DATASET, "1.0.0")
  tfrecords = {n for n in fileio.glob(version_dir, "*") if ".tfrecord-" in n}
  proc = cli("prepare", f"--dataset={bench.DATASET}", f"--data_dir={remote}", "--convert")
  assert "converted" in proc.stdout and "train 12 examples" in proc.stdout, proc.stdout
  names = set(fileio.glob(version_dir, "*"))
  assert tfrecords and tfrecords <= names  # the TFRecord files stay
  assert any(".array_record-" in n for n in names), names
  converted = sources.TfdsSource(bench.DATASET, "train", remote, False)
  reference = sources.TfdsSource(bench.DATASET, "train", built, False)
  assert len(converted) == len(reference) == 12
  for i in range(12):
    assert converted[i]["image"].data == reference[i]["image"].data, i
    assert converted[i]["label"] == reference[i]["label"], i
  again = cli("prepare", f"--dataset={bench.DATASET}", f"--data_dir={remote}", "--convert")
  assert "train 12 examples" in again.stdout  # already converted: nothing to do
