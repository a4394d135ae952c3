"""Linear probe: a frozen encoder (bit-identical after steps), LARS, and short
Fashion-MNIST runs where the MAE encoder must beat a random one."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config, run_cli, tiny_overrides

# One small MAE pretraining shared by the probe and fine-tuning tests (session cache).
PRETRAIN_DIMS = dict(embed_dim=64, depth=2, num_heads=2, patch_size=7)
PRETRAIN_STEPS = 700
_CACHE = {}


def pretrained_mae(tmp_path_factory):
  """Workdir of a ~700-step MAE pretraining on Fashion-MNIST (made once per session)."""
  if "workdir" not in _CACHE:
    from mae_jax.train import pretrain
    config = tiny_overrides(load_config("pretrain_fmnist"), steps=PRETRAIN_STEPS, batch=128)
    config.model.update(**PRETRAIN_DIMS, decoder_embed_dim=32, decoder_depth=1)
    config.optim.base_lr = 3e-3
    config.log_every_steps = 100
    config.checkpoint.every_steps = PRETRAIN_STEPS
    workdir = str(tmp_path_factory.mktemp("mae_pretrained"))
    pretrain.train_and_evaluate(config, workdir)
    _CACHE["workdir"] = workdir
  return _CACHE["workdir"]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, fmnist_available):
  return pretrained_mae(tmp_path_factory)


def probe_config(init_from: str, steps: int = 200):
  config = load_config("linprobe_fmnist", f"steps={steps}")
  config.model.update(**PRETRAIN_DIMS)
  config.init_from = init_from
  config.batch_size = 128
  config.data.eval_max_examples = 2000
  config.log_every_steps = 50
  config.checkpoint.async_save = False
  return config


def _bits(tree):
  return jax.tree.map(lambda a: np.asarray(a).view(np.uint32).copy(), jax.device_get(tree))


def test_probe_step_leaves_encoder_bit_identical():
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax.train import classifier, optim
  from mae_jax.train import step as step_lib
  config = probe_config("")
  config.model.update(embed_dim=32, depth=1, num_heads=2)
  model = classifier.build_classifier(config, head_norm=True)
  mesh = mesh_lib.make_mesh(config.mesh)
  schedule = lambda step: 5.0
  tx = optim.lars(config.optim, schedule)
  state, shardings = classifier.create_state(model, classifier.head_only(tx.init), mesh,
                                             (1, 28, 28, 1))
  assert set(state.params) == {"patch_embed", "cls_token", "pos_embed", "blocks_0", "norm",
                               "head"}
  assert set(state.batch_stats["head_norm"]) == {"mean", "var"}
  before = _bits(state.params)
  stats_before = jax.device_get(state.batch_stats)
  step = step_lib.jit_step(classifier.linprobe_step_fn(model, tx, schedule), mesh, shardings,
                           {"image": sharding_lib.batch_sharding(mesh),
                            "label": sharding_lib.batch_sharding(mesh, 1)})
  rng = np.random.default_rng(0)
  for _ in range(3):
    images = jnp.asarray(rng.normal(size=(16, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    state, metrics = step(state, {"image": images, "label": labels})
  after = _bits(state.params)
  for name in before:
    same = jax.tree.leaves(jax.tree.map(np.array_equal, before[name], after[name]))
    if name == "head":
      assert not all(same), "the head did not train"
    else:
      assert all(same), f"encoder param {name} changed"
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  assert not np.allclose(jax.device_get(state.batch_stats)["head_norm"]["mean"],
                         stats_before["head_norm"]["mean"])


def test_lars_is_optax_lars_at_constant_lr():
  from mae_jax.train import optim
  config = load_config("linprobe_imagenet").optim
  assert config.trust_coefficient == 0.001 and config.momentum == 0.9
  ours = optim.lars(config, lambda step: 0.3)
  reference = optax.lars(0.3, weight_decay=0.0, trust_coefficient=0.001, momentum=0.9,
                         trust_ratio_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  params = {"kernel": jnp.linspace(-1, 1, 12).reshape(3, 4), "bias": jnp.ones(4)}
  s1, s2 = ours.init(params), reference.init(params)
  p1 = p2 = params
  for i in range(4):
    g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)) + 0.1, params)
    u1, s1 = ours.update(g, s1, p1)
    u2, s2 = reference.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # the trust ratio bounds the kernel's step: |update| = lr * 0.001 * |w| on step 1
  u, _ = ours.update(params, ours.init(params), params)
  assert float(jnp.linalg.norm(u["kernel"])) == pytest.approx(
      0.3 * 0.001 * float(jnp.linalg.norm(params["kernel"])), rel=1e-5)


@pytest.mark.slow
def test_mae_probe_beats_random_encoder_and_chance(pretrained, tmp_path):
  import mae_jax
  from mae_jax import checkpoint_io
  from mae_jax.train import classifier
  mae = classifier.train_and_evaluate(probe_config(pretrained), str(tmp_path / "mae"))
  random = classifier.train_and_evaluate(probe_config(""), str(tmp_path / "random"))
  with open(tmp_path / "mae" / "eval.json") as f:
    saved = json.load(f)
  assert saved["top1"] == mae["top1"] and saved["step"] == 200
  assert {"top1", "top5", "best_top1"} <= set(saved)
  print(f"probe top-1: MAE {mae['top1']:.4f}, random encoder {random['top1']:.4f}")
  assert mae["top1"] > 0.5                     # chance is 0.1
  assert mae["top1"] > random["top1"] + 0.02   # same budget, same probe
  # the encoder in the probe's final checkpoint is the pretrained one, bit for bit
  probe_params, _ = checkpoint_io.restore_params(
      str(tmp_path / "mae"), None, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  mae_params = jax.device_get(mae_jax.load(pretrained).params)
  for name in ("patch_embed", "cls_token", "blocks_0", "blocks_1", "norm"):
    for a, b in zip(jax.tree.leaves(probe_params[name]), jax.tree.leaves(mae_params[name])):
      np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                    np.asarray(b).view(np.uint32))


def test_cli_reports_missing_init_from(tmp_path):
  proc = run_cli("linprobe", "--config=configs/linprobe_fmnist.py",
                 f"--workdir={tmp_path / 'w'}", f"--config.init_from={tmp_path / 'nothing'}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "init_from" in proc.stderr and "does not exist" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("features", ["mean", "patches"])
def test_demo_probe_reports_mae_random_and_raw_pixels(pretrained, features):
  """The demo's quick probe (eval.json of a pretraining with probe.enabled): the MAE
  encoder beats a random one by the margin the official probe shows; the raw-pixel
  row is printed beside them."""
  import mae_jax
  from mae_jax.train import evaluators
  loaded = mae_jax.load(pretrained)
  config = loaded.config
  config.probe.update(max_train=5000, max_test=2000, features=features)
  result = evaluators.DemoProbe(config, loaded.model).run(loaded, loaded.step)
  print(f"demo probe ({features}): MAE {result['linear_probe_top1']:.4f}, random "
        f"{result['random_init_probe_top1']:.4f}, raw pixels "
        f"{result['raw_pixels_probe_top1']:.4f}")
  assert result["probe_train_images"] == 5000 and result["probe_test_images"] == 2000
  assert 0.5 < result["raw_pixels_probe_top1"] < 1.0
  assert result["linear_probe_top1"] > result["random_init_probe_top1"] + 0.02


def test_probe_crop_is_the_official_single_draw_clamped_crop():
  """The official linear probe crops with MAE's util/crop.RandomResizedCrop: one draw
  of area and aspect, sides clamped to the image, no 10-try loop. Fed torch's random
  numbers, ``clamped_rrc_box`` gives that code's boxes."""
  import math
  torch = pytest.importorskip("torch")
  from mae_jax.data import augment, pipeline

  def official_get_params(height, width, scale, ratio):  # MAE util/crop.py, verbatim maths
    area = height * width
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    w, h = min(w, width), min(h, height)
    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()
    return i, j, h, w

  class TorchDraws:  # the np.random.Generator calls clamped_rrc_box makes, from torch
    def uniform(self, low, high):
      return torch.empty(1).uniform_(low, high).item()

    def integers(self, low, high):
      return torch.randint(low, high, size=(1,)).item()

  same, clamped, n = 0, 0, 400
  for seed in range(n):
    height, width = (375, 500) if seed % 2 else (500, 120)
    torch.manual_seed(seed)
    want = official_get_params(height, width, (0.08, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(seed)
    got = augment.clamped_rrc_box(TorchDraws(), height, width, (0.08, 1.0), (3 / 4, 4 / 3))
    # float32 (torch) vs float64 log/exp may round a side differently, rarely
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1, (seed, got, want)
    same += got == want
    clamped += got[3] == width or got[2] == height
  assert same >= 0.98 * n and clamped > 0.1 * n
  config = load_config("linprobe_fmnist")
  assert config.data.augment.rrc_sampler == "clamped"
  assert pipeline.train_transform(config.data, (0.5,), (0.5,)).keywords["sampler"] == "clamped"
  image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)
  rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
  top, left, h, w = augment.clamped_rrc_box(rng_a, 40, 30)
  from PIL import Image
  # torchvision's resized_crop, as the official crop calls it: crop, then resize
  want = np.asarray(Image.fromarray(image).crop((left, top, left + w, top + h))
                    .resize((16, 16), Image.BICUBIC))
  np.testing.assert_array_equal(
      augment.random_resized_crop(image, rng_b, 16, (0.08, 1.0), sampler="clamped"), want)
