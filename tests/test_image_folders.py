"""Image folders (DIR/<split>/<class>/<image>) as a data source: torchvision
ImageFolder's classes, labels and order; JPEG/PNG/grey/CMYK decoding; corrupt files
stop the run with one line or are skipped and counted; every task trains from them."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import load_config, run_cli, tiny_overrides
from mae_jax.data import pipeline, sources
from mae_jax.errors import CorruptImageError, DataError

CLASSES = ("cat", "dog", "zebra")


def _photo(seed, height=36, width=44):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def write_tree(root, per_class=4, corrupt=False):
  """``root/{train,val}/<class>/...``: RGB JPEGs, a grey JPEG, a PNG with alpha, a CMYK
  JPEG, an upper-case extension, a nested folder, a non-image file (ignored), and
  with ``corrupt`` a ``.jpg`` that is not an image."""
  seed = 0
  for split, n in (("train", per_class), ("val", 2)):
    for c, name in enumerate(CLASSES):
      folder = os.path.join(root, split, name)
      os.makedirs(os.path.join(folder, "more"), exist_ok=True)
      for i in range(n):
        seed += 1
        Image.fromarray(_photo(seed)).save(os.path.join(folder, f"{i:02d}.jpg"), quality=90)
      with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
      if split == "train":
        pixels = _photo(100 + c)
        kinds = [
            ("grey.jpg", Image.fromarray(pixels[..., 0]), "JPEG"),
            ("alpha.png", Image.fromarray(np.dstack([pixels, pixels[..., :1]])), "PNG"),
            ("cmyk.jpg", Image.fromarray(pixels).convert("CMYK"), "JPEG"),
            ("UPPER.JPG", Image.fromarray(pixels[::-1]), "JPEG"),
            (os.path.join("more", "nested.jpeg"), Image.fromarray(pixels[:, ::-1]), "JPEG")]
        for file, image, fmt in kinds[c::len(CLASSES)] + kinds[3:]:
          image.save(os.path.join(folder, file), format=fmt)
  if corrupt:
    with open(os.path.join(root, "train", "dog", "broken.jpg"), "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 this is not a JPEG" * 4)
  return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return write_tree(str(tmp_path_factory.mktemp("images")))


@pytest.fixture(scope="module")
def corrupt_tree(tmp_path_factory):
  return write_tree(str(tmp_path_factory.mktemp("images_corrupt")), corrupt=True)


def folder_config(name, root, **data):
  """A tiny config of task ``name`` reading ``root`` (28x28 RGB crops)."""
  if name == "pretrain":
    config = tiny_overrides(load_config("pretrain_fmnist"), steps=2, batch=8)
  else:
    config = load_config(f"{name}_fmnist", "steps=2")
    config.model.update(embed_dim=32, depth=1, num_heads=2, patch_size=7)
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_classes = len(CLASSES)
    config.log_every_steps = 1
    config.checkpoint.update(every_steps=2, keep=1, async_save=False)
  config.data.update(name="my_images", source="folder", data_dir=root, split="train",
                     eval_split="val", channels=3, num_threads=2, **data)
  return config


def test_classes_labels_and_order_match_torchvision_image_folder(tree):
  datasets = pytest.importorskip("torchvision.datasets")
  from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader
  assert sources.IMG_EXTENSIONS == IMG_EXTENSIONS
  for split in ("train", "val"):
    want = datasets.ImageFolder(os.path.join(tree, split))
    got = sources.FolderSource(tree, split, 3, classes_split="train")
    assert got.class_to_idx == want.class_to_idx == {c: i for i, c in enumerate(CLASSES)}
    assert [(os.path.normpath(p), y) for p, y in got.samples] == want.samples
    assert len(got) == len(want) and got.num_classes == 3
    for index, (path, label) in enumerate(want.samples):   # grey, PNG, CMYK -> RGB
      record = got[index]
      assert record["label"] == label
      np.testing.assert_array_equal(np.asarray(record["image"]),
                                    np.asarray(default_loader(path)), err_msg=path)
  names = {os.path.basename(p) for p, _ in sources.FolderSource(tree, "train", 3).samples}
  assert {"grey.jpg", "alpha.png", "cmyk.jpg", "UPPER.JPG", "nested.jpeg"} <= names
  assert "notes.txt" not in names
  grey = sources.FolderSource(tree, "train", 1)
  assert np.asarray(grey[0]["image"]).shape[-1] == 1


def test_val_labels_follow_the_training_classes(tmp_path):
  root = write_tree(str(tmp_path))
  shutil.rmtree(os.path.join(root, "val", "dog"))   # a val split without one class
  sources.scan_image_folder.cache_clear()
  val = sources.FolderSource(root, "val", 3, classes_split="train")
  assert sorted({y for _, y in val.samples}) == [0, 2]  # zebra keeps label 2
  os.makedirs(os.path.join(root, "val", "yak"))
  Image.fromarray(_photo(0)).save(os.path.join(root, "val", "yak", "a.png"))
  sources.scan_image_folder.cache_clear()  # listings are cached per process
  with pytest.raises(DataError, match="yak"):
    sources.FolderSource(root, "val", 3, classes_split="train")


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
  from mae_jax.errors import ConfigError
  config = folder_config("pretrain", str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match="nowhere/train is not a folder"):
    pipeline.train_iterator(config.data, global_batch=8, seed=0)
  os.makedirs(tmp_path / "d" / "train" / "empty")
  with pytest.raises(DataError, match="empty hold no image files"):
    sources.FolderSource(str(tmp_path / "d"), "train")
  config.data.data_dir = ""
  with pytest.raises(ConfigError, match="data_dir"):
    sources.open_source(config.data, "train")


def test_folder_pipeline_is_deterministic_resumable_and_split_over_processes(tree):
  config = folder_config("pretrain", tree)
  it = pipeline.train_iterator(config.data, global_batch=4, seed=5)
  first = [next(it) for _ in range(3)]
  assert first[0]["image"].dtype == np.uint8 and first[0]["image"].shape == (4, 28, 28, 3)
  resumed = pipeline.train_iterator(config.data, global_batch=4, seed=5)
  resumed.set_state(json.loads(json.dumps(_state_after(config, 1))))
  for want in first[1:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  halves = [pipeline.train_dataset(config.data, global_batch=4, seed=5, process_index=p,
                                   process_count=2)[0][0] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]),
                                first[0]["image"])


def _state_after(config, batches):
  it = pipeline.train_iterator(config.data, global_batch=4, seed=5)
  for _ in range(batches):
    next(it)
  return it.get_state()


def test_corrupt_file_stops_with_its_name_or_is_skipped_and_counted(corrupt_tree, caplog):
  broken = os.path.join(corrupt_tree, "train", "dog", "broken.jpg")
  config = folder_config("pretrain", corrupt_tree)
  n = len(sources.FolderSource(corrupt_tree, "train"))
  with pytest.raises(CorruptImageError, match=f"{broken} cannot be decoded"):
    next(pipeline.train_iterator(config.data, global_batch=n, seed=0))  # reads every file
  config.data.skip_corrupt = True
  batch = next(pipeline.train_iterator(config.data, global_batch=n, seed=0))
  assert batch["image"].shape == (n, 28, 28, 3)
  assert "skipped undecodable image" in caplog.text and broken in caplog.text
  # evaluation leaves it out: one example fewer is valid
  config.data.eval_split = "train"
  _, batches = pipeline.eval_batches(config.data, "train", global_batch=n)
  assert int(next(batches())["valid"].sum()) == n - 1


def test_cli_corrupt_file_is_one_error_line_and_skip_option_trains(corrupt_tree, tmp_path):
  from conftest import TINY_FLAGS
  broken = os.path.join(corrupt_tree, "train", "dog", "broken.jpg")
  n = len(sources.FolderSource(corrupt_tree, "train"))
  args = ["pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
          "--config.data.source=folder", f"--config.data.data_dir={corrupt_tree}",
          "--config.data.eval_split=val", "--config.data.channels=3",
          "--config.data.num_threads=2", f"--config.batch_size={n}",
          "--config.num_train_steps=1", "--config.checkpoint.every_steps=1"]
  proc = run_cli(*args, f"--workdir={tmp_path / 'stop'}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and broken in lines[0], lines
  assert "Traceback" not in proc.stderr + proc.stdout
  proc = run_cli(*args, "--config.data.skip_corrupt=True", f"--workdir={tmp_path / 'skip'}",
                 check=True)
  assert "skipped undecodable image" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def folder_pretrained(tree, tmp_path_factory):
  from mae_jax.train import pretrain
  workdir = str(tmp_path_factory.mktemp("folder_pretrain"))
  assert pretrain.train_and_evaluate(folder_config("pretrain", tree), workdir)["step"] == 2
  return workdir


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_every_task_trains_from_a_folder_of_images(tree, folder_pretrained, tmp_path, task):
  from mae_jax.train import classifier
  config = folder_config(task, tree)
  config.init_from = folder_pretrained
  result = classifier.train_and_evaluate(config, str(tmp_path / task))
  assert result["step"] == 2 and result["num_examples"] == 6  # the whole val split
  assert 0.0 <= result["top1"] <= 1.0


def test_visualize_own_images(folder_pretrained, tmp_path):
  """``visualize --images``: the user's files, shorter side resized and centre-cropped,
  masked with the given ratio and seed, in the usual four-column grid."""
  from mae_jax import viz
  Image.fromarray(_photo(1, 50, 80)).save(tmp_path / "a.jpg", quality=95)
  Image.fromarray(_photo(2, 64, 40)[..., 0]).save(tmp_path / "b.png")  # grey
  files = [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]

  def grid(out, seed, ratio="0.5"):
    run_cli("visualize", f"--workdir={folder_pretrained}", f"--out={out}", "--images",
            *files, f"--mask_ratio={ratio}", f"--seed={seed}", check=True)
    return np.asarray(Image.open(out).convert("RGB"))

  full = grid(tmp_path / "g1.png", 3)
  scale, pad, size = viz.default_scale(28), 2, 28
  header = full.shape[0] - (2 * (size + pad) + pad) * scale   # the column titles
  assert 0 < header < 100 and full.shape[1] == (4 * (size + pad) + pad) * scale
  first = full[header:]
  tile = lambda img, i, j: img[(pad + i * (size + pad)) * scale:
                               (pad + i * (size + pad) + size) * scale:scale,
                               (pad + j * (size + pad)) * scale:
                               (pad + j * (size + pad) + size) * scale:scale]
  want = viz.load_images(files, 28, 3)
  for i in range(2):
    assert np.abs(tile(first, i, 0).astype(int) - want[i]).max() <= 1
    masked = tile(first, i, 1).reshape(4, 7, 4, 7, 3).transpose(0, 2, 1, 3, 4)
    grey_patches = np.all(masked.reshape(16, -1) == 128, axis=1).sum()
    assert grey_patches == 8, grey_patches   # mask ratio 0.5 of 16 patches
  np.testing.assert_array_equal(grid(tmp_path / "g2.png", 3), full)
  assert not np.array_equal(grid(tmp_path / "g3.png", 4), full)
  proc = run_cli("visualize", f"--workdir={folder_pretrained}", f"--out={tmp_path / 'x.png'}",
                 f"--images={tmp_path / 'missing.jpg'}")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: --images: {tmp_path / 'missing.jpg'} does not exist."]
