"""MAE model: loss semantics, parameter counts of every variant, initialisation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import config_lib, config_schema
from mae_jax.errors import ConfigError
from mae_jax.models import registry
from mae_jax.models.mae import MaskedAutoencoder, patch_targets, reconstruction_loss


def tiny_model(**kw):
  args = dict(patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2,
              decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
  args.update(kw)
  return MaskedAutoencoder(**args)


def init(model, shape):
  return nn.unbox(model.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                             jnp.zeros(shape))["params"])


def test_loss_ignores_predictions_of_visible_patches():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
  pred = jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32)
  mask = jnp.asarray([[1, 0, 1, 0], [0, 0, 1, 1]], jnp.float32)
  base = reconstruction_loss(images, pred, mask, 4, False)
  changed = pred + 100.0 * (1 - mask)[..., None]
  np.testing.assert_allclose(reconstruction_loss(images, changed, mask, 4, False), base,
                             rtol=1e-6)
  moved = pred + 1.0 * mask[..., None]
  assert abs(float(reconstruction_loss(images, moved, mask, 4, False)) - float(base)) > 1e-3
  # by hand: mean over removed patches of the per-patch MSE
  target = np.asarray(images).reshape(2, 2, 4, 2, 4, 1).transpose(0, 1, 3, 2, 4, 5)
  target = target.reshape(2, 4, 16)
  per_patch = ((np.asarray(pred) - target) ** 2).mean(-1)
  m = np.asarray(mask)
  np.testing.assert_allclose(float(base), (per_patch * m).sum() / m.sum(), rtol=1e-5)


def test_norm_pix_target_uses_unbiased_variance():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  ours = np.asarray(patch_targets(jnp.asarray(images), 4, True))
  patches = images.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 48)
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, ddof=1, keepdims=True)
  np.testing.assert_allclose(ours, (patches - mean) / np.sqrt(var + 1e-6), rtol=1e-5,
                             atol=1e-5)


def test_forward_shapes_and_noise_determinism():
  model = tiny_model()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 16, 16, 1)), jnp.float32)
  params = init(model, x.shape)
  noise = jnp.asarray(np.random.default_rng(3).random((3, 16)), jnp.float32)
  loss, pred, mask = model.apply({"params": params}, x, train=True, noise=noise)
  assert pred.shape == (3, 16, 16) and mask.shape == (3, 16)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), 12)
  loss2, pred2, _ = model.apply({"params": params}, x, train=True, noise=noise)
  np.testing.assert_array_equal(np.asarray(pred), np.asarray(pred2))
  _, _, mask_rng = model.apply({"params": params}, x, rngs={"masking": jax.random.key(5)})
  assert np.asarray(mask_rng).sum() == 36 and np.isfinite(float(loss))


def param_count(variant, image_size, channels=3):
  config = config_lib.pretrain_defaults(variant)
  config.data.image_size, config.data.channels = image_size, channels
  model = registry.build_mae(config)
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)},
      jnp.zeros((1, image_size, image_size, channels))))["params"]
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


def test_vit_b16_parameter_count_matches_official():
  trainable = param_count("B/16", 224)
  assert trainable == 111_655_680
  pos_tables = 197 * 768 + 197 * 512   # PyTorch counts the fixed tables as parameters
  assert trainable + pos_tables == 111_907_840


@pytest.mark.parametrize("variant,size,expected", [
    # embed + blocks + norm + decoder (512 wide, 8 blocks) + pred, by the formula below
    ("S/16", 224, None), ("L/16", 224, None), ("H/14", 224, None), ("tiny/4", 28, None)])
def test_every_variant_builds_with_formula_count(variant, size, expected):
  dims = registry.variant_dims(variant)
  d, depth, dd, ddepth, p = (dims["embed_dim"], dims["depth"], dims["decoder_embed_dim"],
                             dims["decoder_depth"], dims["patch_size"])
  block = lambda w: 4 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * (4 * w * w) + 4 * w + w
  expected = (p * p * 3 * d + d + d + depth * block(d) + 2 * d
              + d * dd + dd + dd + ddepth * block(dd) + 2 * dd + dd * p * p * 3 + p * p * 3)
  assert param_count(variant, size) == expected


def test_initialisation_follows_official_recipe():
  model = tiny_model(embed_dim=64, decoder_embed_dim=32)
  params = init(model, (1, 16, 16, 1))
  fc1 = np.asarray(params["blocks_0"]["mlp"]["fc1"]["kernel"])
  bound = np.sqrt(6 / (64 + 256))
  assert np.abs(fc1).max() <= bound and np.abs(fc1).max() > 0.9 * bound
  qkv = np.asarray(params["blocks_0"]["attn"]["qkv"]["kernel"]).reshape(64, 192)
  assert np.abs(qkv).max() <= np.sqrt(6 / (64 + 192))
  patch = np.asarray(params["patch_embed"]["proj"]["kernel"]).reshape(16, 64)
  assert np.abs(patch).max() <= np.sqrt(6 / (16 + 64))
  assert np.abs(patch).max() > 0.9 * np.sqrt(6 / (16 + 64))
  for name in ("bias",):
    assert not np.any(np.asarray(params["blocks_0"]["mlp"]["fc1"][name]))
  np.testing.assert_array_equal(np.asarray(params["norm"]["scale"]), 1)
  cls = np.asarray(params["cls_token"])
  assert 0.005 < cls.std() < 0.05


def test_bad_config_values_are_clear():
  config = config_lib.pretrain_defaults("tiny/4")
  config.data.image_size, config.data.channels = 30, 1
  with pytest.raises(ConfigError, match="not divisible by patch_size 4"):
    registry.build_mae(config)
  config.data.image_size = 28
  config.model.num_heads = 3
  with pytest.raises(ConfigError, match="not divisible by model.num_heads=3"):
    config_schema.check(config)
  with pytest.raises(ConfigError, match="unknown model size 'Q'"):
    registry.variant_dims("Q/16")
  with pytest.raises(ConfigError, match="SIZE/PATCH"):
    registry.variant_dims("B16")
