"""``model.scan_layers``: the blocks as one ``nn.scan`` compute what the per-block model
computes (loss, gradients, optimizer updates), and every boundary (checkpoints,
exports, ``init_from``, analysis) sees the per-block layout."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from conftest import load_config, tiny_overrides
from mae_jax import stacking
from mae_jax.models.mae import MaskedAutoencoder
from mae_jax.models.vit import VisionTransformer

MAE = dict(patch_size=7, in_chans=1, embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=32,
           decoder_depth=2, decoder_num_heads=2)
VIT = dict(num_classes=5, image_size=28, patch_size=7, embed_dim=64, depth=3, num_heads=2)


def images(n=3):
  return jax.random.normal(jax.random.key(1), (n, 28, 28, 1))


def mae_params(**kw):
  model = MaskedAutoencoder(**MAE, **kw)
  return nn.unbox(model.init({"params": jax.random.key(0), "masking": jax.random.key(0)},
                             images())["params"])


def assert_trees_close(got, want):
  """float32 agreement: rtol 1e-6, atol 1e-6 of each leaf's largest magnitude (two
  compilations of the same sums may round differently in the last bit)."""
  flat_got = traverse_util.flatten_dict(got, sep="/")
  flat_want = traverse_util.flatten_dict(want, sep="/")
  assert flat_got.keys() == flat_want.keys()
  for k, w in flat_want.items():
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(flat_got[k]), w, rtol=1e-6,
                               atol=1e-6 * float(np.abs(w).max()), err_msg=k)


# ----------------------------------------------------------------- the adapter


@pytest.mark.slow
def test_per_block_and_stacked_invert_each_other():
  params = jax.tree.map(np.asarray, mae_params())
  stacked = stacking.stacked(params)
  assert set(stacked) - set(params) == {"blocks", "decoder_blocks"}
  assert not any(k.startswith("blocks_") for k in stacked)
  qkv = stacked["blocks"]["attn"]["qkv"]["kernel"]
  np.testing.assert_array_equal(qkv[1], params["blocks_1"]["attn"]["qkv"]["kernel"])
  assert qkv.shape == (2,) + params["blocks_0"]["attn"]["qkv"]["kernel"].shape
  back = stacking.per_block(stacked)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
  assert jax.tree.structure(stacking.per_block(params)) == jax.tree.structure(params)
  assert jax.tree.structure(stacking.stacked(stacked)) == jax.tree.structure(stacked)


def test_scanned_init_has_stacked_logical_axes():
  from mae_jax.parallel.sharding import LOGICAL_AXIS_RULES
  model = MaskedAutoencoder(**MAE, scan_layers=True)
  boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                             "masking": jax.random.key(0)}, images()))
  qkv = boxed["params"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv.names == ("layers", "embed", None, "heads", "kv")
  assert qkv.value.shape == (2, 64, 3, 2, 32)
  spec = nn.logical_to_mesh_axes(qkv.names, LOGICAL_AXIS_RULES)
  assert tuple(spec) == (None, "fsdp", None, "model", None)
  per_block = jax.tree.map(lambda a: a.shape, nn.unbox(mae_params()))
  assert jax.tree.map(lambda a: a.shape, stacking.per_block(nn.unbox(boxed["params"]))) == \
      per_block


# ----------------------------------------------------------------- same numbers


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_mae_scanned_loss_and_gradients_equal_unscanned(remat):
  x = images()
  noise = jax.random.uniform(jax.random.key(2), (3, 16))
  params = mae_params()

  def grads(scan, p):
    model = MaskedAutoencoder(**MAE, remat=remat, scan_layers=scan)
    return jax.jit(jax.value_and_grad(
        lambda p: model.apply({"params": p}, x, noise=noise)[0]))(p)

  loss, want = grads(False, params)
  loss_scanned, got = grads(True, stacking.stacked(params))
  np.testing.assert_allclose(float(loss_scanned), float(loss), rtol=1e-6)
  assert_trees_close(stacking.per_block(got), want)


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_classifier_scanned_loss_and_gradients_equal_unscanned(pool):
  x = images(4)
  labels = jnp.array([0, 1, 2, 3])
  model = VisionTransformer(**VIT, pool=pool)
  params = nn.unbox(model.init(jax.random.key(0), x)["params"])

  def grads(scan, p):
    m = model.clone(scan_layers=scan, remat="full")
    def loss(p):
      logits = m.apply({"params": p}, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.value_and_grad(loss))(p)

  loss, want = grads(False, params)
  loss_scanned, got = grads(True, stacking.stacked(params))
  np.testing.assert_allclose(float(loss_scanned), float(loss), rtol=1e-6)
  assert_trees_close(stacking.per_block(got), want)


def test_scanned_drop_path_uses_each_layers_rate():
  """Rates (0, 0.9): layer 0 never drops; layer 1 drops both branches for ~81% of the
  samples, whose output is then layer 0's output exactly."""
  from mae_jax.models.vit import Block, make_blocks, run_blocks

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      blocks = make_blocks("blocks", 2, 2, remat="none", scan=True, drop_path=(0.0, 0.9))
      return run_blocks(blocks, x, not train, 2, (0.0, 0.9))

  x = jax.random.normal(jax.random.key(0), (512, 3, 8))
  variables = Stack().init(jax.random.key(1), x, False)
  out = np.asarray(Stack().apply(variables, x, True, rngs={"dropout": jax.random.key(2)}))
  first = stacking.per_block(nn.unbox(variables["params"]))["blocks_0"]
  layer0 = np.asarray(Block(2).apply({"params": first}, x, True))
  only_layer0 = np.mean(np.all(np.isclose(out, layer0, rtol=1e-5, atol=1e-5), axis=(1, 2)))
  assert 0.7 < only_layer0 < 0.9


def test_llrd_update_of_scanned_params_equals_unscanned():
  from mae_jax.train import optim
  config = load_config("finetune_fmnist")
  config.optim.update(layer_decay=0.5, weight_decay=0.1)
  model = VisionTransformer(**VIT)
  params = nn.unbox(model.init(jax.random.key(0), images())["params"])
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape),
                       params)
  tx = optim.adamw_layer_decay(config.optim, lambda step: 0.01, depth=3)
  tx_scan = optim.adamw_layer_decay(config.optim, lambda step: 0.01, depth=3, scanned=True)
  want, state = tx.update(grads, tx.init(params), params)
  want, _ = tx.update(grads, state, params)  # second step: moments matter
  sp, sg = stacking.stacked(params), stacking.stacked(grads)
  got, state = tx_scan.update(sg, tx_scan.init(sp), sp)
  got, _ = tx_scan.update(sg, state, sp)
  assert_trees_close(stacking.per_block(got), want)
  for mask in (optim.finetune_decay_mask, optim.decay_mask):
    scanned = traverse_util.flatten_dict(mask(sp), sep="/")
    per_block = traverse_util.flatten_dict(mask(params), sep="/")
    for k, v in scanned.items():
      names = ([f"blocks_{i}/{k.split('/', 1)[1]}" for i in range(3)]
               if k.startswith("blocks/") else [k])
      assert all(per_block[n] == v for n in names), k
  assert optim.decay_mask(sp)["blocks"]["norm1"]["scale"] is False
  assert optim.decay_mask(sp)["blocks"]["mlp"]["fc1"]["kernel"] is True


# ----------------------------------------------------------------- checkpoints


def _state(config, model, seed):
  """A pretraining state with every leaf (moments too) random, and its shardings."""
  from mae_jax.train import checkpoint as ckpt_lib
  abstract, _ = ckpt_lib.abstract_train_state(config, model)
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  values = [jax.device_put(jax.random.normal(k, a.shape).astype(a.dtype), a.sharding)
            if a.dtype != jnp.int32 else jax.device_put(jnp.asarray(7, a.dtype), a.sharding)
            for k, a in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, values), abstract


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_checkpoint_restores_into_the_other_layout(tmp_path, saved_scanned):
  from mae_jax import checkpoint_io
  from mae_jax.models import registry
  config = tiny_overrides(load_config("pretrain_fmnist"))
  config.model.update(depth=2, decoder_depth=2)
  config.model.scan_layers = saved_scanned
  state, _ = _state(config, registry.build_mae(config), 0)
  ckpt = checkpoint_io.Checkpointer(str(tmp_path), with_data=False, async_save=False)
  ckpt.save(3, state, config.to_dict(), force=True)
  ckpt.close()

  config.model.scan_layers = not saved_scanned
  template, abstract = _state(config, registry.build_mae(config), 1)
  ckpt = checkpoint_io.Checkpointer(str(tmp_path), with_data=False, async_save=False)
  restored, step = ckpt.restore_latest(template)
  ckpt.close()
  assert step == 3
  assert jax.tree.structure(restored) == jax.tree.structure(abstract)
  want = stacking.convert(jax.device_get(state), abstract)
  for (path, got), w in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                            jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(w),
                                  err_msg=jax.tree_util.keystr(path))
  assert int(restored.step) == 7
  # the per-block reader sees blocks_i whichever layout was saved
  params, _ = checkpoint_io.restore_params(str(tmp_path), None, jax.sharding.SingleDeviceSharding(
      jax.devices()[0]))
  assert "blocks_1" in params and "blocks" not in params


def test_checkpoint_of_another_depth_is_still_refused(tmp_path):
  from mae_jax import checkpoint_io
  from mae_jax.errors import CheckpointError
  from mae_jax.models import registry
  config = tiny_overrides(load_config("pretrain_fmnist"))
  config.model.update(depth=2)
  state, _ = _state(config, registry.build_mae(config), 0)
  ckpt = checkpoint_io.Checkpointer(str(tmp_path), with_data=False, async_save=False)
  ckpt.save(1, state, config.to_dict(), force=True)
  ckpt.close()
  config.model.update(depth=3, scan_layers=True)
  template, _ = _state(config, registry.build_mae(config), 1)
  ckpt = checkpoint_io.Checkpointer(str(tmp_path), with_data=False, async_save=False)
  with pytest.raises(CheckpointError, match="holds another model"):
    ckpt.restore_latest(template)
  ckpt.close()


# ----------------------------------------------------------------- exports, init_from, analysis


@pytest.mark.parametrize("fmt", ["official", "timm", "hf"])
def test_export_of_scanned_model_is_bit_identical(fmt):
  from mae_jax import export
  config = tiny_overrides(load_config("pretrain_fmnist"))
  config.model.update(depth=2, decoder_depth=2)
  params = jax.tree.map(np.asarray, nn.unbox(registry_init(config)))
  want = export.to_torch_state_dict(params, config, fmt)
  scanned = config.copy_and_resolve_references()
  scanned.model.scan_layers = True
  got = export.to_torch_state_dict(stacking.stacked(params), scanned, fmt)
  assert got.keys() == want.keys()
  for k in want:
    assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
  imported = export.from_torch_state_dict(got, fmt, scanned)
  assert "blocks_1" in imported.params  # imports give the per-block layout


def registry_init(config):
  from mae_jax.models import registry
  model = registry.build_mae(config)
  size, ch = config.data.image_size, config.data.channels
  return model.init({"params": jax.random.key(0), "masking": jax.random.key(0)},
                    jnp.zeros((1, size, size, ch)))["params"]


def test_classifier_export_of_scanned_params_is_bit_identical():
  from mae_jax.export import classifier as export_classifier
  from mae_jax.train import classifier
  config = load_config("finetune_fmnist")
  config.model.update(embed_dim=32, depth=2, num_heads=2, patch_size=7)
  model = classifier.build_classifier(config)
  size, ch = config.data.image_size, config.data.channels
  params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(0),
                                                        jnp.zeros((1, size, size, ch)))["params"]))
  want = export_classifier.to_torch_state_dict(params, {}, config, "timm")
  got = export_classifier.to_torch_state_dict(stacking.stacked(params), {}, config, "timm")
  assert got.keys() == want.keys()
  assert all(np.array_equal(got[k], want[k]) for k in want)


def test_init_from_places_per_block_checkpoint_into_scanned_classifier(tmp_path):
  from mae_jax.models import load as load_lib
  from mae_jax.train import checkpoint as ckpt_lib
  from mae_jax.train import classifier
  pre = tiny_overrides(load_config("pretrain_fmnist"))
  pre.model.update(depth=2)
  params = jax.tree.map(np.asarray, nn.unbox(registry_init(pre)))
  ckpt_lib.write_workdir(str(tmp_path / "mae"), pre, params)
  config = load_config("finetune_fmnist")
  config.model.update(embed_dim=pre.model.embed_dim, depth=2, num_heads=2, patch_size=7,
                      scan_layers=True)
  model = classifier.build_classifier(config)
  size, ch = config.data.image_size, config.data.channels
  target = nn.unbox(model.init(jax.random.key(3), jnp.zeros((1, size, size, ch)))["params"])
  tensors, report = load_lib.load_pretrained(str(tmp_path / "mae"), target, model.grid)
  placed = load_lib.place(tensors, target)
  np.testing.assert_array_equal(np.asarray(placed["blocks"]["mlp"]["fc1"]["kernel"][1]),
                                params["blocks_1"]["mlp"]["fc1"]["kernel"])
  assert "blocks_0/attn/qkv/kernel" in report["loaded"]


def test_analysis_capture_of_scanned_model_equals_unscanned():
  from mae_jax.analysis import hooks
  params = mae_params()
  x = np.asarray(images(2))
  noise = hooks.make_noise(0, 2, 16)
  want = hooks.capture(MaskedAutoencoder(**MAE), params, x, noise)
  got = hooks.capture(MaskedAutoencoder(**MAE, scan_layers=True), stacking.stacked(params),
                      x, noise)
  assert len(got.encoder_attn) == 2 and len(got.decoder_hidden) == 3
  for a, b in zip(got.encoder_attn + got.decoder_hidden, want.encoder_attn + want.decoder_hidden):
    np.testing.assert_array_equal(a, b)
