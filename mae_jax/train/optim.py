"""Optimizers and schedules (optax): the official MAE AdamW recipe.

lr = base_lr * batch_size / 256, linear warmup from 0, then cosine to ``min_lr``,
evaluated per step. Weight decay on every weight with more than one dimension,
none on biases and norms (``timm.optim.param_groups_weight_decay``); the fixed
position tables are constants of the model, not parameters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mae_jax.errors import ConfigError


def peak_lr(optim_config, batch_size: int) -> float:
  return optim_config.base_lr * batch_size / 256


def warmup_steps(optim_config, steps_per_epoch: int) -> int:
  if optim_config.warmup_steps:
    return int(optim_config.warmup_steps)
  return int(round(optim_config.warmup_epochs * steps_per_epoch))


def learning_rate_schedule(optim_config, batch_size: int, total_steps: int,
                           steps_per_epoch: int = 1) -> optax.Schedule:
  warmup = warmup_steps(optim_config, steps_per_epoch)
  if total_steps <= 0:
    raise ConfigError(f"the run has {total_steps} steps; set num_train_steps or num_epochs.")
  if warmup > total_steps:
    raise ConfigError(f"warmup ({warmup} steps) is longer than the run ({total_steps} "
                      "steps); lower optim.warmup_steps/warmup_epochs.")
  peak = peak_lr(optim_config, batch_size)
  if optim_config.min_lr > peak:
    raise ConfigError(f"optim.min_lr={optim_config.min_lr} exceeds the peak lr {peak}.")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim_config.min_lr)


def decay_mask(params):
  """True where weight decay applies: kernels and tokens, not biases or 1-D params."""
  def rule(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    return leaf.ndim > 1 and name != "bias"
  return jax.tree_util.tree_map_with_path(rule, params)


def adamw(optim_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  for key in ("b1", "b2"):
    if not 0.0 <= optim_config[key] < 1.0:
      raise ConfigError(f"optim.{key}={optim_config[key]} must be in [0, 1).")
  if optim_config.weight_decay < 0:
    raise ConfigError(f"optim.weight_decay={optim_config.weight_decay} must be >= 0.")
  mu_dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(
      optim_config.get("moments_dtype", "float32"))
  if mu_dtype is None:
    raise ConfigError("optim.moments_dtype must be float32 or bfloat16.")
  parts = []
  if optim_config.clip_grad_norm and optim_config.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_config.clip_grad_norm))
  parts.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=1e-8,
                           weight_decay=optim_config.weight_decay, mask=decay_mask,
                           mu_dtype=mu_dtype))
  tx = optax.chain(*parts)
  accum = int(optim_config.get("grad_accum_steps", 1))
  if accum < 1:
    raise ConfigError(f"optim.grad_accum_steps={accum} must be >= 1.")
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx
