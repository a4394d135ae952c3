"""Batches travel to the device as uint8 and every task normalises inside its jitted
step: the results equal those of host-normalised float32 batches (the earlier
pipeline) to float tolerance."""
import jax
import numpy as np
import optax
import pytest

from conftest import load_config, tiny_overrides
from mae_jax.data import augment
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import classifier
from mae_jax.train import step as step_lib

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pixels(seed, shape=(8, 28, 28, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _assert_same(run_uint8, run_float):
  """Same metrics and parameters after a plain SGD step (Adam would magnify the
  float noise of near-zero gradients)."""
  (state_a, metrics_a), (state_b, metrics_b) = run_uint8, run_float
  for key in ("loss", "grad_norm", "param_norm"):
    np.testing.assert_allclose(float(metrics_a[key]), float(metrics_b[key]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(state_a.params), jax.device_get(state_b.params))


def test_to_model_input_is_the_host_normalisation():
  pixels = _pixels(0, (4, 9, 7, 3))
  got = np.asarray(jax.jit(lambda x: step_lib.to_model_input(x, (MEAN, STD)))(pixels))
  np.testing.assert_allclose(got, augment.normalize(pixels, MEAN, STD), rtol=1e-6, atol=1e-6)
  floats = augment.normalize(pixels, MEAN, STD)
  assert step_lib.to_model_input(floats, None) is floats
  # uint16 pixels are normalised in units of 65535, float32 pixels as they are
  wide = (pixels.astype(np.uint16) * 257).astype(np.uint16)
  got = np.asarray(jax.jit(lambda x: step_lib.to_model_input(x, (MEAN, STD)))(wide))
  np.testing.assert_allclose(got, (wide / 65535.0 - np.float32(MEAN)) / np.float32(STD),
                             rtol=1e-5, atol=1e-5)
  raw = pixels.astype(np.float32)
  got = np.asarray(jax.jit(lambda x: step_lib.to_model_input(x, (MEAN, STD)))(raw))
  np.testing.assert_allclose(got, (raw - np.float32(MEAN)) / np.float32(STD), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(TypeError, match="uint8, uint16 or float32"):
    step_lib.to_model_input(pixels.astype(np.int32), (MEAN, STD))


def test_pretrain_step_on_uint8_equals_float_input():
  from mae_jax.models import registry
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=2, batch=8)
  config.data.channels = 3
  mesh = mesh_lib.make_mesh(config.mesh)
  model = registry.build_mae(config)
  tx = optax.sgd(0.1)
  runs = []
  for stats, images in (((MEAN, STD), _pixels(1)),
                        (None, augment.normalize(_pixels(1), MEAN, STD))):
    state, shardings = step_lib.create_train_state(model, tx, mesh, (1, 28, 28, 3), 0)
    step = step_lib.make_train_step(model, tx, mesh, shardings, lambda s: 1e-3, 0, stats)
    runs.append(step(state, images))
  _assert_same(*runs)


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_classifier_steps_on_uint8_equal_float_input(task):
  config = load_config(f"{task}_fmnist")
  config.model.update(embed_dim=32, depth=1, num_heads=2, patch_size=7)
  config.data.channels = 3
  mesh = mesh_lib.make_mesh(config.mesh)
  model = classifier.build_classifier(config)
  tx = optax.sgd(0.1)
  opt_init = tx.init if task == "finetune" else classifier.head_only(tx.init)
  labels = np.arange(8, dtype=np.int32) % 10
  shardings_in = {"image": sharding_lib.batch_sharding(mesh),
                  "label": sharding_lib.batch_sharding(mesh, 1)}
  extra = {}
  if task == "finetune":  # mixup on: the mixing follows the normalisation
    extra = {"mix": np.asarray([0.7, 0.7, 0, 0, 0, 0], np.float32)}
    shardings_in["mix"] = sharding_lib.replicated(mesh)
  runs = []
  for stats, images in (((MEAN, STD), _pixels(2)),
                        (None, augment.normalize(_pixels(2), MEAN, STD))):
    state, shardings = classifier.create_state(model, opt_init, mesh, (1, 28, 28, 3))
    if task == "finetune":
      fn = classifier.finetune_step_fn(model, tx, lambda s: 1e-3, 0, None, 10, 0.1, stats)
    else:
      fn = classifier.linprobe_step_fn(model, tx, lambda s: 1e-3, stats)
    step = step_lib.jit_step(fn, mesh, shardings, shardings_in)
    runs.append(step(state, {"image": images, "label": labels, **extra}))
  _assert_same(*runs)
