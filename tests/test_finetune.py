"""Fine-tuning: layer-wise lr decay against the official rule, loading pretrain
checkpoints into the classifier, bad inputs, and a short Fashion-MNIST run."""
import json
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config, tiny_overrides
from mae_jax.errors import CheckpointError, ConfigError
from mae_jax.models import load as load_lib
from mae_jax.train import classifier

from test_linprobe import PRETRAIN_DIMS, pretrained_mae


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, fmnist_available):
  return pretrained_mae(tmp_path_factory)


# ----------------------------------------------------------------- the official rule


def official_layer_id(name: str, num_layers: int) -> int:
  """facebookresearch/mae util/lr_decay.py ``get_layer_id_for_vit``."""
  if name in ["cls_token", "pos_embed"]:
    return 0
  elif name.startswith("patch_embed"):
    return 0
  elif name.startswith("blocks"):
    return int(name.split(".")[1]) + 1
  else:
    return num_layers


def official_groups(named_params: dict, depth: int, layer_decay: float):
  """``param_groups_lrd``: name -> (lr_scale, weight_decay applies)."""
  num_layers = depth + 1
  scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
  out = {}
  for name, ndim in named_params.items():
    no_decay = ndim == 1 or name in {"pos_embed", "cls_token", "dist_token"}
    out[name] = (scales[official_layer_id(name, num_layers)], not no_decay)
  return out


def torch_name(path: str) -> str:
  """Our ``blocks_3/attn/qkv/kernel`` -> timm's ``blocks.3.attn.qkv.weight``."""
  parts = path.split("/")
  if parts[0].startswith("blocks_"):
    parts = ["blocks", parts[0].split("_")[1]] + parts[1:]
  leaf = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
  return ".".join(parts[:-1] + [leaf])


def torch_ndim(path: str, shape) -> int:
  """Rank of the tensor in timm (fused qkv bias and norms are 1-D there)."""
  return 1 if path.endswith(("/bias", "/scale")) else len(shape)


def _classifier(config, **overrides):
  config.model.update(**overrides)
  return classifier.build_classifier(config)


def _abstract_params(model, size=28, channels=1):
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, size, size, channels)))
  return nn.unbox(variables["params"])


def test_llrd_multipliers_and_decay_mask_match_official():
  from mae_jax.train import optim
  config = load_config("finetune_fmnist")
  model = _classifier(config, embed_dim=32, depth=4, num_heads=2, patch_size=7)
  params = _abstract_params(model)
  flat = traverse_util.flatten_dict(params, sep="/")
  official = official_groups({torch_name(k): torch_ndim(k, v.shape) for k, v in flat.items()},
                             depth=4, layer_decay=0.75)
  scales = traverse_util.flatten_dict(optim.layer_lr_scales(params, 4, 0.75), sep="/")
  decay = traverse_util.flatten_dict(optim.finetune_decay_mask(params), sep="/")
  assert len(official) == len(flat) > 40
  for path in flat:
    want_scale, want_decay = official[torch_name(path)]
    assert scales[path] == pytest.approx(want_scale), path
    assert decay[path] == want_decay, path
  assert scales["head/kernel"] == 1.0 and scales["fc_norm/scale"] == 1.0
  assert scales["blocks_3/mlp/fc1/kernel"] == pytest.approx(0.75)
  assert scales["blocks_0/attn/qkv/kernel"] == pytest.approx(0.75 ** 4)
  assert scales["patch_embed/proj/kernel"] == pytest.approx(0.75 ** 5)
  assert scales["pos_embed"] == scales["cls_token"] == pytest.approx(0.75 ** 5)
  assert not decay["pos_embed"] and not decay["cls_token"]
  assert not decay["blocks_1/attn/qkv/bias"] and not decay["fc_norm/scale"]
  assert decay["head/kernel"] and decay["patch_embed/proj/kernel"]


def test_llrd_optimizer_scales_each_layer_and_its_weight_decay():
  from mae_jax.train import optim
  config = load_config("finetune_fmnist")
  model = _classifier(config, embed_dim=32, depth=2, num_heads=2, patch_size=7)
  params = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), _abstract_params(model))
  config.optim.update(layer_decay=0.5, weight_decay=0.1)
  lr = 0.01
  tx = optim.adamw_layer_decay(config.optim, lambda step: lr, depth=2)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  scales = optim.layer_lr_scales(params, 2, 0.5)
  decays = optim.finetune_decay_mask(params)
  # step 1 of Adam: m_hat / sqrt(v_hat) = 1 for a constant gradient
  flat = lambda t: traverse_util.flatten_dict(t, sep="/")
  for path, u in flat(updates).items():
    want = -lr * flat(scales)[path] * (1.0 + (0.1 * 0.5 if flat(decays)[path] else 0.0))
    np.testing.assert_allclose(u, want, rtol=1e-4, err_msg=path)


# ----------------------------------------------------------------- loading checkpoints


def _mae_workdir(tmp_path, **model):
  """A pretraining workdir written by ``write_workdir`` (fresh random MAE params)."""
  from mae_jax.models import registry
  from mae_jax.train import checkpoint as ckpt_lib
  config = tiny_overrides(load_config("pretrain_fmnist"))
  config.model.update(**model)
  mae = registry.build_mae(config)
  variables = jax.jit(mae.init)({"params": jax.random.key(1), "masking": jax.random.key(2)},
                                jnp.zeros((1, 28, 28, 1)))
  params = nn.unbox(variables["params"])
  workdir = str(tmp_path / "mae")
  ckpt_lib.write_workdir(workdir, config, params, step=5)
  return workdir, mae, params


def _initialised(model, size=28):
  from mae_jax.parallel import mesh as mesh_lib
  mesh = mesh_lib.make_mesh(dict(data=-1, fsdp=1, model=1))
  state, _ = classifier.create_state(model, lambda p: {}, mesh, (1, size, size, 1))
  return state


def test_classifier_loads_pretrain_checkpoint_and_matches_the_encoder(tmp_path, caplog):
  from mae_jax.models.pos_embed import sincos_2d
  dims = dict(embed_dim=32, depth=2, num_heads=2, patch_size=7)
  workdir, mae, mae_params = _mae_workdir(tmp_path, **dims)
  config = load_config("linprobe_fmnist")
  model = _classifier(config, **dims)      # pool="cls": uses the encoder's norm too
  state = _initialised(model)
  with caplog.at_level(logging.INFO):
    tensors, report = load_lib.load_pretrained(workdir, state.params, model.grid)
  encoder = ["patch_embed", "cls_token", "blocks_0", "blocks_1", "norm"]
  assert {k.split("/")[0] for k in report["loaded"]} == set(encoder + ["pos_embed"])
  assert {k.split("/")[0] for k in report["fresh"]} == {"head"}
  assert report["ignored"] == ["decoder_blocks_0", "decoder_embed", "decoder_norm",
                               "decoder_pred", "mask_token"]
  assert "ignoring checkpoint params" in caplog.text and "decoder_blocks_0" in caplog.text
  flat_mae = traverse_util.flatten_dict(mae_params, sep="/")
  for name, value in tensors.items():
    if name != "pos_embed":
      np.testing.assert_array_equal(value, flat_mae[name])
  np.testing.assert_allclose(tensors["pos_embed"][0], sincos_2d(32, 4, cls_token=True))
  # loaded, the classifier's features are the MAE encoder's (cls token after norm)
  params = load_lib.place(tensors, state.params)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 28, 28, 1)), jnp.float32)
  ours = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                     method=model.features)
  theirs = mae.apply({"params": mae_params}, images, method=mae.features)[:, 0]
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

  # another image size: the fixed sin-cos table is recomputed for the new grid
  config = load_config("finetune_fmnist")
  config.data.image_size = 56
  big = _classifier(config, **dims)
  tensors, report = load_lib.load_pretrained(workdir, _abstract_params(big, 56), big.grid)
  assert tensors["pos_embed"].shape == (1, 1 + 64, 32)
  np.testing.assert_array_equal(tensors["pos_embed"][0], sincos_2d(32, 8, cls_token=True))
  assert {k.split("/")[0] for k in report["fresh"]} == {"fc_norm", "head"}
  assert "norm" in report["ignored"]       # avg pooling uses fc_norm instead


def test_incompatible_or_missing_init_from_is_a_clear_error(tmp_path):
  workdir, _, _ = _mae_workdir(tmp_path, embed_dim=32, depth=1, num_heads=2, patch_size=7)
  config = load_config("finetune_fmnist")
  wide = _classifier(config, embed_dim=64, depth=1, num_heads=2, patch_size=7)
  with pytest.raises(CheckpointError) as e:
    load_lib.load_pretrained(workdir, _abstract_params(wide), wide.grid)
  message = str(e.value)
  assert "blocks_0/attn/qkv/kernel: checkpoint [32, 3, 2, 16], model [64, 3, 2, 32]" in message
  assert "more shapes differ" in message and "embed_dim=32" in message
  deep = _classifier(load_config("finetune_fmnist"), embed_dim=32, depth=3, num_heads=2,
                     patch_size=7)
  with pytest.raises(CheckpointError, match="missing in the checkpoint: blocks_1, blocks_2"):
    load_lib.load_pretrained(workdir, _abstract_params(deep), deep.grid)
  config = load_config("finetune_fmnist")
  config.init_from = str(tmp_path / "no_such_workdir")
  with pytest.raises(CheckpointError, match="does not exist"):
    classifier.train_and_evaluate(config, str(tmp_path / "ft"))
  config = load_config("finetune_fmnist")
  config.num_classes = 5
  with pytest.raises(ConfigError, match="has 10 classes but num_classes=5"):
    classifier.train_and_evaluate(config, str(tmp_path / "ft"))
  with pytest.raises(CheckpointError, match="not a mae_jax workdir"):
    load_lib.load_pretrained(str(tmp_path), _abstract_params(wide), wide.grid)


# ----------------------------------------------------------------- configs


def test_fmnist_config_has_its_short_run_recipe_and_trains(tmp_path, fmnist_available):
  """``configs/finetune_fmnist.py``: the recipe its docstring documents for a run shorter
  than an epoch, and, shrunk, two steps that evaluate once, at the end."""
  from conftest import tiny_classifier
  from mae_jax.train import optim
  config = load_config("finetune_fmnist")
  aug = config.data.augment
  assert (aug.mixup, aug.cutmix, aug.rand_augment, aug.reprob, config.model.drop_path,
          aug.label_smoothing, config.ema.enabled) == (0.0, 0.0, "none", 0.0, 0.0, 0.1, False)
  assert (config.batch_size, config.num_train_steps, config.optim.layer_decay) == (64, 600, 0.75)
  assert optim.peak_lr(config.optim, config.batch_size) == pytest.approx(1e-3)
  assert (config.optim.warmup_steps, config.eval_every_steps) == (30, -1)  # -1: at the end
  short = load_config("finetune_fmnist", "steps=200")
  assert (short.optim.warmup_steps, short.num_train_steps) == (10, 200)
  short.num_train_steps = 60    # a command-line override moves the warmup
  assert short.optim.warmup_steps == 3
  short.eval_every_steps = 20   # and this one only itself
  assert (short.num_train_steps, short.eval_every_steps) == (60, 20)

  config = tiny_classifier("finetune", steps=2)
  result = classifier.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "eval.json") as f:
    saved = json.load(f)
  assert [h["step"] for h in saved["history"]] == [2]
  assert saved["top1"] == result["top1"] and 0.0 <= result["top1"] <= result["top5"] <= 1.0


@pytest.mark.parametrize("variant,blr,decay,drop,epochs", [
    ("B/16", 5e-4, 0.65, 0.1, 100), ("L/16", 1e-3, 0.75, 0.2, 50),
    ("H/14", 1e-3, 0.75, 0.3, 50)])
def test_imagenet_configs_carry_the_official_recipes(variant, blr, decay, drop, epochs):
  ft = load_config("finetune_imagenet", f"variant={variant}")
  assert (ft.optim.base_lr, ft.optim.layer_decay, ft.model.drop_path, ft.num_epochs) == (
      blr, decay, drop, epochs)
  assert ft.batch_size == 1024 and ft.optim.warmup_epochs == 5 and ft.model.pool == "avg"
  assert ft.data.augment.rand_augment == "rand-m9-mstd0.5-inc1"
  assert (ft.data.augment.mixup, ft.data.augment.cutmix, ft.data.augment.reprob,
          ft.data.augment.label_smoothing) == (0.8, 1.0, 0.25, 0.1)
  lp = load_config("linprobe_imagenet", f"variant={variant}")
  assert (lp.batch_size, lp.optim.base_lr, lp.optim.warmup_epochs, lp.optim.weight_decay,
          lp.model.pool) == (16384, 0.1, 10, 0.0, "cls")
  assert lp.num_epochs == (90 if variant == "B/16" else 50)
  small = load_config("finetune_imagenet", f"variant={variant},runlocal")
  assert small.num_train_steps == 2 and small.model.embed_dim == 64


# ----------------------------------------------------------------- a short run


@pytest.fixture(scope="session")
def finetuned(pretrained, tmp_path_factory):
  config = load_config("finetune_fmnist", "steps=150")
  config.model.update(**PRETRAIN_DIMS)
  config.init_from = pretrained
  config.data.eval_max_examples = 1000
  config.ema.update(enabled=True, decay=0.99)
  config.checkpoint.async_save = False
  workdir = str(tmp_path_factory.mktemp("finetuned"))
  return workdir, classifier.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_finetune_beats_chance(finetuned):
  workdir, result = finetuned
  with open(f"{workdir}/eval.json") as f:
    saved = json.load(f)
  print(f"fine-tune top-1 {saved['top1']:.4f} (EMA {saved['ema_top1']:.4f})")
  assert saved["top1"] == result["top1"] > 0.35     # chance is 0.1
  assert saved["best_top1"] >= saved["top1"] and saved["top5"] > saved["top1"]
  assert saved["step"] == 150 and "ema_top1" in saved


def test_num_classes_mismatch_reinitialises_the_head(finetuned, caplog):
  workdir, _ = finetuned
  config = load_config("finetune_fmnist")
  config.num_classes = 5
  model = _classifier(config, **PRETRAIN_DIMS)
  with caplog.at_level(logging.INFO):
    tensors, report = load_lib.load_pretrained(workdir, _abstract_params(model), model.grid)
  assert {k.split("/")[0] for k in report["fresh"]} == {"head"}
  assert "fc_norm/scale" in tensors and "blocks_1/mlp/fc2/kernel" in tensors
  assert "head is for 10 classes, the model has num_classes=5" in caplog.text
  assert "re-initialising the head" in caplog.text
