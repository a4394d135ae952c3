"""Rectangular images, any number of channels, 16-bit and float pixels: the resize
against PIL band by band, the rectangular sin-cos table against the official
formula, crops that keep the asked aspect ratio, statistics against NumPy, .npy and
TIFF folders, and a folder of 4-band uint16 .npy images through pretraining, the
linear probe, fine-tuning, visualize and a timm export with parity."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from mae_jax import config_lib
from mae_jax.data import arrays, augment, pipeline
from mae_jax.errors import DataError
from mae_jax.models import pos_embed

H, W, BANDS = 64, 96, 4   # images of 96x64 pixels (height 64, width 96)


# ------------------------------------------------------------------ pure functions


def pil_bands(image: np.ndarray, size) -> np.ndarray:
  """PIL's bicubic resize of every band as a float ("F") image: the reference."""
  out_h, out_w = size
  return np.stack([np.asarray(Image.fromarray(image[..., b].astype(np.float32), "F")
                              .resize((out_w, out_h), Image.BICUBIC))
                   for b in range(image.shape[-1])], -1)


@pytest.mark.parametrize("size", [(9, 31), (40, 13), (17, 23)])
def test_resize_is_pils_bicubic_band_by_band(size):
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1000, (17, 23, 5)).astype(np.float32)
  got = arrays.resize(image, size)
  assert got.shape == size + (5,) and got.dtype == np.float32
  np.testing.assert_allclose(got, pil_bands(image, size), rtol=0, atol=2e-3)
  wide = rng.integers(0, 65536, (17, 23, 5)).astype(np.uint16)
  got = arrays.resize(wide, size)
  want = np.clip(np.round(pil_bands(wide.astype(np.float32), size)), 0, 65535)
  assert got.dtype == np.uint16 and np.abs(got.astype(float) - want).max() <= 1
  # uint8 RGB: PIL's 8-bit resize rounds between its two passes and uses fixed-point
  # weights: within two grey levels of it (as the fast backend, augment.py)
  rgb = rng.integers(0, 256, (17, 23, 3)).astype(np.uint8)
  pil = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.BICUBIC))
  assert np.abs(arrays.resize(rgb, size).astype(int) - pil).max() <= 2


def official_rect_sincos(dim: int, gh: int, gw: int) -> np.ndarray:
  """facebookresearch/mae util/pos_embed.py ``get_2d_sincos_pos_embed`` with its grid
  of ``arange(gh) x arange(gw)`` (``grid = np.meshgrid(grid_w, grid_h)``), as
  rectangular-image MAEs call ``get_2d_sincos_pos_embed_from_grid``."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  grid = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
  grid = np.stack(grid, axis=0).reshape([2, 1, gh, gw])
  emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
  return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_rectangular_sincos_table_is_the_official_formula():
  for gh, gw in ((8, 12), (12, 8), (3, 7)):
    got = pos_embed.sincos_2d(32, (gh, gw), cls_token=True)
    np.testing.assert_allclose(got, official_rect_sincos(32, gh, gw), atol=1e-6)


def test_rectangular_position_table_resize_matches_torch_bicubic():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  table = rng.standard_normal((1 + 4 * 6, 8)).astype(np.float32)
  got = pos_embed.resize_table(table, (6, 9), old_grid=(4, 6))
  grid = torch.from_numpy(table[1:].reshape(1, 4, 6, 8)).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=(6, 9), mode="bicubic",
                                         align_corners=False)
  want = want.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
  np.testing.assert_allclose(got[1:], want, atol=1e-5)
  np.testing.assert_array_equal(got[:1], table[:1])


def test_crops_keep_the_aspect_ratio_the_config_asks_for():
  rng = np.random.default_rng(0)
  ratio = augment.target_ratio((3 / 4, 4 / 3), (H, W))
  assert ratio == pytest.approx((0.75 * W / H, 4 / 3 * W / H))
  assert augment.target_ratio((3 / 4, 4 / 3), 32) == (3 / 4, 4 / 3)
  image = rng.integers(0, 65535, (200, 300, BANDS)).astype(np.uint16)
  for _ in range(50):
    box = augment.rrc_box(rng, 200, 300, (0.2, 1.0), ratio)
    assert ratio[0] - 0.05 <= box[3] / box[2] <= ratio[1] + 0.05, box
  out = augment.crop_flip(image, rng, (H, W), BANDS, True, scale=(0.2, 1.0),
                          ratio=(3 / 4, 4 / 3), sampler="torchvision", backend="pil")
  assert out.shape == (H, W, BANDS) and out.dtype == np.uint16
  # the evaluation crop: aspect kept, centre cut out
  centre = augment.center_crop(image, (H, W), crop_pct=1.0)
  np.testing.assert_array_equal(centre, arrays.center_crop(image, (H, W), 1.0))
  assert centre.shape == (H, W, BANDS)


def test_flip_mirrors_every_band():
  image = np.arange(2 * 3 * 5, dtype=np.uint16).reshape(2, 3, 5)
  out = arrays.resized_crop(image, (0, 0, 2, 3), (2, 3), flip=True)
  np.testing.assert_array_equal(out, image[:, ::-1])


# ------------------------------------------------------------------ folders


def write_folder(root, shape=(H, W, BANDS), per_class=6, val=2, suffix=".npy"):
  """``root/{train,val}/{a,b}/*.npy``: class b is brighter in every band."""
  rng = np.random.default_rng(0)
  images = {}
  for split, n in (("train", per_class), ("val", val)):
    for k, cls in enumerate("ab"):
      (root / split / cls).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        x = (rng.integers(0, 4000, shape) + 20000 * k +
             1000 * np.arange(shape[-1])).astype(np.uint16)
        path = root / split / cls / f"{i}{suffix}"
        if suffix == ".npy":
          np.save(path, x)
        else:
          import tifffile
          tifffile.imwrite(path, x)
        images[str(path)] = x
  return images


def folder_data(root, **kw):
  c = config_lib.pretrain_defaults("tiny/4")
  c.data.update(name="bands", source="folder", data_dir=str(root), split="train",
                eval_split="val", channels=BANDS, num_threads=0, **kw)
  with c.data.ignore_type():
    c.data.image_size = (H, W)
  return c.data


def test_npy_and_tiff_folders_read_the_same_pixels_and_statistics(tmp_path):
  npy = write_folder(tmp_path / "npy")
  tif = write_folder(tmp_path / "tif", suffix=".tif")
  a = pipeline.open_checked(folder_data(tmp_path / "npy"), "train")
  b = pipeline.open_checked(folder_data(tmp_path / "tif"), "train")
  assert a[0].dtype == b[0].dtype == np.uint16 and a[0].arrays and len(a[0]) == 12
  for i in range(len(a[0])):
    np.testing.assert_array_equal(a[0][i]["image"], b[0][i]["image"])
  assert a[1:] == b[1:]
  assert a[1] is not None and len(a[1]) == BANDS
  # the statistics: every training pixel, per band, in units of 65535 (NumPy)
  train = np.stack([x for p, x in npy.items() if "/train/" in p]).reshape(-1, BANDS) / 65535
  np.testing.assert_allclose(a[1], train.mean(0), atol=2e-6)
  np.testing.assert_allclose(a[2], train.std(0), atol=2e-6)
  assert len(tif) == len(npy)
  # a band-first (planar) TIFF is read as [H, W, C] too
  import tifffile
  x = next(iter(npy.values()))
  tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(x, -1, 0), planarconfig="separate")
  np.testing.assert_array_equal(arrays.read_array(tmp_path / "planar.tif", BANDS), x)


def test_training_batches_are_uint16_and_normalised_like_the_host(tmp_path):
  write_folder(tmp_path)
  data = folder_data(tmp_path)
  batch = next(pipeline.train_iterator(data, global_batch=4, seed=0))
  assert batch["image"].shape == (4, H, W, BANDS) and batch["image"].dtype == np.uint16
  images, labels = pipeline.eval_arrays(data, "val")
  assert images.shape == (4, H, W, BANDS) and images.dtype == np.float32
  assert abs(float(images.mean())) < 2.0 and list(labels) == [0, 0, 1, 1]


@pytest.mark.parametrize("problem,expected", [
    ("int32", "holds int32 pixels; mae_jax reads uint8, uint16, float32"),
    ("bands", "has 3 channels, data.channels=4; set --config.data.channels=3"),
    ("mixed", "holds uint8 pixels, the folder's first image uint16"),
    ("png", "is not an array file"),
])
def test_bad_array_folders_are_one_error_line(tmp_path, problem, expected):
  write_folder(tmp_path / "d", per_class=2, val=1)
  bad = tmp_path / "d" / "train" / "b" / "9.npy"
  if problem == "int32":
    np.save(bad, np.zeros((H, W, BANDS), np.int32))
  elif problem == "bands":
    np.save(bad, np.zeros((H, W, 3), np.uint16))
  elif problem == "mixed":
    np.save(bad, np.zeros((H, W, BANDS), np.uint8))
  else:
    Image.new("RGB", (W, H)).save(bad.with_suffix(".png"))
  proc = run_cli("pretrain", *ms_flags(tmp_path / "d", steps=1, batch=2),
                 f"--workdir={tmp_path}/w")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), \
      proc.stderr[-3000:]
  assert expected in lines[0], lines[0]


# ------------------------------------------------------------------ the commands


def ms_flags(root, task="pretrain", steps=2, batch=4):
  arg = f"task={task},data_dir={root},channels={BANDS},size={H}x{W},steps={steps}," \
        f"batch={batch},classes=2"
  flags = [f"--config=configs/multispectral_folder.py:{arg}",
           "--config.model.embed_dim=32", "--config.model.depth=1",
           "--config.model.num_heads=2", "--config.model.patch_size=16",
           "--config.log_every_steps=1", "--config.checkpoint.async_save=False",
           "--config.data.num_threads=0"]
  if task == "pretrain":
    flags += ["--config.model.decoder_embed_dim=32", "--config.model.decoder_depth=1",
              "--config.model.decoder_num_heads=2", "--config.eval_every_steps=0",
              "--config.num_recon_images=2"]
  return flags


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  root = tmp_path_factory.mktemp("bands")
  write_folder(root / "data")
  workdir = root / "mae"
  run_cli("pretrain", *ms_flags(root / "data"), f"--workdir={workdir}", check=True)
  return root / "data", workdir


@pytest.mark.slow
def test_a_4_band_uint16_folder_pretrains_probes_and_finetunes(pretrained, tmp_path):
  data, workdir = pretrained
  config = json.loads((workdir / "config.json").read_text())["data"]
  assert config["image_size"] == [H, W] and config["channels"] == BANDS
  assert len(config["mean"]) == len(config["std"]) == BANDS
  assert config["mean"][3] > config["mean"][0]  # band 3 is 3000 grey levels brighter
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  for task in ("linprobe", "finetune"):
    out = tmp_path / task
    run_cli(task, *ms_flags(data, task), f"--config.init_from={workdir}", f"--workdir={out}",
            check=True)
    result = json.loads((out / "eval.json").read_text())
    assert result["step"] == 2 and result["num_examples"] == 4  # the whole val split
    assert 0.0 <= result["top1"] <= 1.0, result
    # every task normalises with the training split's statistics
    assert json.loads((out / "config.json").read_text())["data"]["mean"] == config["mean"]
  # visualize: a chosen composite and, optionally, every band
  png = tmp_path / "v.png"
  run_cli("visualize", f"--workdir={workdir}", f"--out={png}", "--num_images=2",
          "--bands=3,2,1", "--all_bands", check=True)
  assert Image.open(png).size[0] > 4 * W
  proc = run_cli("visualize", f"--workdir={workdir}", f"--out={tmp_path}/x.png",
                 "--bands=3,2,7")
  assert proc.returncode == 2 and "band 7 does not exist" in proc.stderr


@pytest.mark.slow
def test_its_mae_exports_to_timm_with_parity(pretrained, tmp_path):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  import jax
  from mae_jax import loading
  _, workdir = pretrained
  out = tmp_path / "vit.pth"
  run_cli("export", f"--workdir={workdir}", "--format=timm", f"--out={out}", check=True)
  meta = json.loads((tmp_path / "vit.json").read_text())
  assert meta["kwargs"]["img_size"] == [H, W] and meta["kwargs"]["in_chans"] == BANDS
  model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"])
  model.load_state_dict(torch.load(out, weights_only=True), strict=True)
  model.eval()
  loaded = loading.load_mae(str(workdir))
  images, _ = pipeline.eval_arrays(loaded.config.data, "val", 3)
  ours = np.asarray(jax.jit(lambda p, x: loaded.model.apply({"params": p}, x,
                                                            method="features"))(
                                                                loaded.params, images))
  with torch.no_grad():
    theirs = model.forward_features(torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
  assert theirs.shape == ours.shape == (3, 1 + (H // 16) * (W // 16), 32)
  assert float(np.abs(theirs - ours).max()) <= 1e-4
  assert meta["pretrained_cfg"]["mean"] == json.loads(
      (workdir / "config.json").read_text())["data"]["mean"]
  proc = run_cli("export", f"--workdir={workdir}", "--format=official",
                 f"--out={tmp_path}/mae.pth")
  assert proc.returncode == 2 and "takes one img_size" in proc.stderr
