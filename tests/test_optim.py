"""Schedules and the weight-decay mask against the official formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import config_lib
from mae_jax.errors import ConfigError
from mae_jax.train import optim


def official_lr(step, total, warmup, peak, min_lr):
  """util/lr_sched.adjust_learning_rate, in steps."""
  if step < warmup:
    return peak * step / warmup
  return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                       (total - warmup)))


def test_schedule_matches_official_at_key_points():
  c = config_lib.pretrain_defaults("tiny/4").optim
  c.update(base_lr=1.5e-4, warmup_steps=100, min_lr=1e-6)
  sched = optim.learning_rate_schedule(c, batch_size=4096, total_steps=1000)
  peak = 1.5e-4 * 4096 / 256
  assert peak == pytest.approx(2.4e-3)
  for step in (0, 50, 100, 550, 999, 1000):
    assert float(sched(step)) == pytest.approx(official_lr(step, 1000, 100, peak, 1e-6),
                                               rel=1e-5, abs=1e-9)
  assert float(sched(100)) == pytest.approx(peak)
  assert float(sched(550)) == pytest.approx((peak + 1e-6) / 2, rel=1e-5)


def test_warmup_epochs_use_steps_per_epoch():
  c = config_lib.pretrain_defaults("tiny/4").optim
  c.update(warmup_steps=0, warmup_epochs=2)
  assert optim.warmup_steps(c, steps_per_epoch=30) == 60
  with pytest.raises(ConfigError, match="warmup"):
    optim.learning_rate_schedule(c, 256, total_steps=50, steps_per_epoch=30)


def test_decay_mask_excludes_biases_and_norms():
  params = {"blocks_0": {"norm1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
                         "attn": {"qkv": {"kernel": jnp.ones((4, 3, 2, 2)),
                                          "bias": jnp.zeros((3, 2, 2))}}},
            "cls_token": jnp.zeros((1, 1, 4))}
  mask = optim.decay_mask(params)
  assert mask["blocks_0"]["attn"]["qkv"]["kernel"] is True
  assert mask["blocks_0"]["attn"]["qkv"]["bias"] is False  # 3-D, but a bias
  assert mask["blocks_0"]["norm1"]["scale"] is False
  assert mask["blocks_0"]["norm1"]["bias"] is False
  assert mask["cls_token"] is True  # as the official model (no no_weight_decay list)


def test_adamw_applies_decay_only_where_masked():
  c = config_lib.pretrain_defaults("tiny/4").optim
  c.update(weight_decay=0.5)
  tx = optim.adamw(c, lambda step: 0.1)
  params = {"w": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.ones(2)}}
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]["kernel"]), -0.1 * 0.5)
  np.testing.assert_allclose(np.asarray(updates["b"]["bias"]), 0.0)


def test_gradient_accumulation_and_clipping_build():
  c = config_lib.pretrain_defaults("tiny/4").optim
  c.update(grad_accum_steps=2, clip_grad_norm=1.0)
  tx = optim.adamw(c, lambda step: 0.1)
  params = {"w": {"kernel": jnp.ones((2, 2))}}
  state = tx.init(params)
  grads = {"w": {"kernel": jnp.full((2, 2), 10.0)}}
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(np.asarray(updates["w"]["kernel"]), 0.0)  # accumulating
  updates, state = tx.update(grads, state, params)
  assert np.all(np.asarray(updates["w"]["kernel"]) < 0)


def test_clipping_bounds_the_gradient_adam_sees():
  """``optim.clip_grad_norm`` clips the global gradient norm before AdamW: two updates
  against a NumPy Adam fed the clipped gradients. (An Adam step alone is nearly
  scale-invariant; the second one, after a gradient of another norm, shows the clip.)"""
  c = config_lib.pretrain_defaults("tiny/4").optim
  c.update(clip_grad_norm=1.0, weight_decay=0.0, b1=0.9, b2=0.95)
  tx = optim.adamw(c, lambda step: 0.1)
  params = {"w": {"kernel": jnp.zeros((2, 2))}}
  state = tx.init(params)
  m = v = np.zeros((2, 2))
  for t, g in enumerate([np.full((2, 2), 10.0), np.array([[0.1, -0.2], [0.3, 0.05]])], 1):
    updates, state = tx.update({"w": {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
    g = g * min(1.0, 1.0 / np.linalg.norm(g))  # the first is clipped, the second is not
    m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
    want = -0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.95 ** t)) + 1e-8)
    np.testing.assert_allclose(np.asarray(updates["w"]["kernel"]), want, rtol=1e-5)
