"""`mae-jax prepare`: a tiny imagenet2012 from fake manual-download archives, built by
TFDS's own builder, read back, and pretrained on with configs/pretrain_imagenet.py."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

from conftest import run_cli

# Three of the 1000 synsets have train images; the builder's label list has all 1000.
SYNSETS = ["n01440764", "n01443537", "n01484850"]
SIZES = [(40, 30), (64, 48), (33, 50), (80, 80)]  # (height, width), one of each per synset
GRAY = {("train", 1, 2), ("validation", 0, 3)}    # (split, synset index, image index)


def _jpeg(rng, h, w, gray):
  from PIL import Image
  pixels = rng.integers(0, 255, (h, w) if gray else (h, w, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _fake_archives(manual_dir):
  """ILSVRC2012_img_train.tar (one tar of JPEGs per synset) and ILSVRC2012_img_val.tar
  (flat JPEGs named as the real ones), as image-net.org ships them."""
  rng = np.random.default_rng(0)
  os.makedirs(manual_dir)
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
    for s, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as per_synset:
        for i, (h, w) in enumerate(SIZES):
          _add(per_synset, f"{synset}_{i}.JPEG", _jpeg(rng, h, w, ("train", s, i) in GRAY))
      _add(train, f"{synset}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
    for i, (h, w) in enumerate(SIZES):
      _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG",
           _jpeg(rng, h, w, ("validation", 0, i) in GRAY))


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  """(manual_dir, data_dir, the prepare command's result) of one build for the module."""
  root = tmp_path_factory.mktemp("imagenet")
  manual, data = str(root / "manual"), str(root / "tfds")
  _fake_archives(manual)
  proc = run_cli("prepare", "--dataset=imagenet2012", f"--manual_dir={manual}",
                 f"--data_dir={data}", timeout=600)
  return manual, data, proc


def _tfds_file(name):
  import tensorflow_datasets as tfds
  with open(os.fspath(tfds.core.tfds_path(f"datasets/imagenet2012/{name}"))) as f:
    return f.read().split()


def test_prepare_builds_imagenet2012_as_array_record(imagenet_dir):
  _, data, proc = imagenet_dir
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "train 12 examples, validation 4 examples" in proc.stdout
  version_dir = os.path.join(data, "imagenet2012", "5.1.0")
  files = sorted(os.listdir(version_dir))
  assert "imagenet2012-train.array_record-00000-of-00001" in files, files

  import tensorflow_datasets as tfds
  from mae_jax.data import jpeg
  # the reference: TFDS's label list (line = class index) and, for the validation
  # images sorted by name, the first lines of its validation label file
  names = _tfds_file("labels.txt")
  val_synsets = _tfds_file("validation_labels.txt")[:len(SIZES)]
  for split in ("train", "validation"):
    source = tfds.data_source("imagenet2012", split=split, data_dir=data,
                              decoders={"image": tfds.decode.SkipDecoding()})
    got = {}
    for k in range(len(source)):
      record = source[k]
      image = jpeg.decode(record["image"], channels=3)
      got[record["file_name"].decode()] = (int(record["label"]), image.shape)
    if split == "train":
      want = {f"{synset}_{i}.JPEG": (names.index(synset), (h, w, 3))
              for synset in SYNSETS for i, (h, w) in enumerate(SIZES)}
    else:
      want = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": (names.index(val_synsets[i]), (h, w, 3))
              for i, (h, w) in enumerate(SIZES)}
    assert got == want, split


def test_pretrain_imagenet_config_trains_on_the_prepared_dataset(imagenet_dir, tmp_path):
  """configs/pretrain_imagenet.py, shrunk by its runlocal switch, pointed back at the
  prepared imagenet2012 by overrides: two steps with finite losses and a checkpoint."""
  _, data, proc = imagenet_dir
  assert proc.returncode == 0, proc.stderr[-2000:]
  workdir = tmp_path / "pretrain"
  run_cli("pretrain", "--config=configs/pretrain_imagenet.py:runlocal",
          f"--workdir={workdir}", "--config.data.name=imagenet2012",
          "--config.data.source=tfds", f"--config.data.data_dir={data}",
          "--config.data.eval_split=validation", "--config.num_train_steps=2",
          "--config.num_recon_images=4", timeout=600, check=True)
  with open(workdir / "metrics.jsonl") as f:
    rows = [r for r in map(json.loads, f) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
  with open(workdir / "config.json") as f:
    assert json.load(f)["data"]["name"] == "imagenet2012"
  assert "2" in os.listdir(workdir / "checkpoints")


def _error_line(proc):
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def test_prepare_errors_are_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  line = _error_line(run_cli("prepare", "--dataset=imagenet2012",
                             f"--data_dir={tmp_path / 'a'}"))
  assert "manual download: give --manual_dir" in line and "ILSVRC2012_img_train.tar" in line
  line = _error_line(run_cli("prepare", "--dataset=imagenet2012", f"--manual_dir={empty}",
                             f"--data_dir={tmp_path / 'b'}"))
  assert "preparing imagenet2012 failed" in line and "ILSVRC2012_img_val.tar" in line
  line = _error_line(run_cli("prepare", "--dataset=imagenet2013",
                             f"--data_dir={tmp_path / 'c'}"))
  assert "TFDS has no dataset 'imagenet2013'" in line


def test_an_unprepared_dataset_names_the_prepare_command(tmp_path):
  from mae_jax.data import sources
  from mae_jax.errors import DataError
  with pytest.raises(DataError) as e:
    sources.TfdsSource("imagenet2012", "train", str(tmp_path), download=False)
  assert (f"mae-jax prepare --dataset=imagenet2012 --data_dir={tmp_path}" in str(e.value)
          and "--manual_dir" in str(e.value))


def test_convert_refuses_a_damaged_tfrecord_shard_and_changes_nothing(tmp_path):
  """A truncated TFRecord shard stops `prepare --convert` with one line naming it; no
  ArrayRecord file appears and dataset_info.json is byte-identical. Restored, the
  shard converts, and an unprepared folder names the command that builds it."""
  from conftest import synthetic_jpeg_tfds
  bench = synthetic_jpeg_tfds(str(tmp_path), file_format="tfrecord")
  data = str(tmp_path / "tfds")
  version_dir = tmp_path / "tfds" / bench.DATASET / "1.0.0"
  shard = next(p for p in version_dir.iterdir() if ".tfrecord-" in p.name)
  info_before = (version_dir / "dataset_info.json").read_bytes()
  whole = shard.read_bytes()
  shard.write_bytes(whole[:len(whole) * 2 // 3])
  line = _error_line(run_cli("prepare", f"--dataset={bench.DATASET}", f"--data_dir={data}",
                             "--convert"))
  assert shard.name in line and "the dataset is unchanged" in line, line
  assert (version_dir / "dataset_info.json").read_bytes() == info_before
  assert not [p for p in version_dir.iterdir() if ".array_record" in p.name]
  shard.write_bytes(whole)
  proc = run_cli("prepare", f"--dataset={bench.DATASET}", f"--data_dir={data}", "--convert")
  assert proc.returncode == 0 and "train 12 examples" in proc.stdout, proc.stderr[-2000:]
  line = _error_line(run_cli("prepare", f"--dataset={bench.DATASET}",
                             f"--data_dir={tmp_path / 'none'}", "--convert"))
  assert "no prepared" in line or "has no dataset" in line, line
