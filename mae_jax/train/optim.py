"""Optimizers and schedules (optax): the official MAE recipes.

lr = base_lr * effective batch / 256 with effective batch = batch_size *
grad_accum_steps (global), linear warmup from 0, then cosine to ``min_lr``.
Every step count of a config (``num_train_steps``, ``warmup_steps``, checkpoint
and log intervals) counts micro-batches, the iterations of the official code's
data loop. With ``grad_accum_steps = k`` the optimizer updates every k
micro-batches (``optax.MultiSteps``, gradients averaged) and update ``u`` uses the
official ``util/lr_sched.py`` value at micro-batch ``u * k``, the one where the
official loop sets the lr for that accumulation window.

Weight decay on every weight with more than one dimension, none on biases and
norms (``timm.optim.param_groups_weight_decay``); the fixed position tables are
constants of the model, not parameters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mae_jax.errors import ConfigError
from mae_jax.stacking import unstacked_ndim


def accumulation_steps(optim_config) -> int:
  """``optim.grad_accum_steps`` (micro-batches per optimizer update), checked."""
  return int(optim_config.get("grad_accum_steps", 1))


def peak_lr(optim_config, batch_size: int) -> float:
  """``base_lr * batch_size * grad_accum_steps / 256`` (the official effective batch)."""
  return optim_config.base_lr * batch_size * accumulation_steps(optim_config) / 256


def warmup_steps(optim_config, steps_per_epoch: int) -> int:
  """Warmup length in micro-batches."""
  if optim_config.warmup_steps:
    return int(optim_config.warmup_steps)
  return int(round(optim_config.warmup_epochs * steps_per_epoch))


def check_run_length(optim_config, total_steps: int, steps_per_epoch: int,
                     uses_epochs: bool) -> None:
  """Refuses a run (or an epoch) that ``grad_accum_steps`` does not divide."""
  accum = accumulation_steps(optim_config)
  if uses_epochs and steps_per_epoch % accum:
    raise ConfigError(f"an epoch has {steps_per_epoch} micro-batches, which "
                      f"optim.grad_accum_steps={accum} does not divide; change batch_size "
                      "or grad_accum_steps, or set num_train_steps and warmup_steps.")
  if total_steps % accum:
    raise ConfigError(f"the run has {total_steps} micro-batches, which "
                      f"optim.grad_accum_steps={accum} does not divide; choose "
                      f"num_train_steps as a multiple of {accum}.")


def micro_batch_schedule(optim_config, batch_size: int, total_steps: int,
                         steps_per_epoch: int = 1) -> optax.Schedule:
  """The official lr as a function of the micro-batch index (fractional epochs)."""
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


def learning_rate_schedule(optim_config, batch_size: int, total_steps: int,
                           steps_per_epoch: int = 1) -> optax.Schedule:
  """The schedule the optimizer consumes: indexed by optimizer update.

  Update ``u`` gets the micro-batch schedule at ``u * grad_accum_steps``; with no
  accumulation the two are the same function.
  """
  micro = micro_batch_schedule(optim_config, batch_size, total_steps, steps_per_epoch)
  accum = accumulation_steps(optim_config)
  return micro if accum == 1 else (lambda update: micro(update * accum))


def applied_lr(schedule: optax.Schedule, optim_config):
  """``lr(micro_step)``: the lr the update of this micro-batch's window applies."""
  accum = accumulation_steps(optim_config)
  return lambda step: schedule(step // accum)


def accumulate(tx: optax.GradientTransformation, optim_config
               ) -> optax.GradientTransformation:
  """``tx`` updating once every ``grad_accum_steps`` micro-batches (mean gradient)."""
  accum = accumulation_steps(optim_config)
  return optax.MultiSteps(tx, every_k_schedule=accum) if accum > 1 else tx


def did_update(opt_state) -> jax.Array | bool:
  """Whether the step that produced ``opt_state`` changed the parameters."""
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0
  return True


def _clip(optim_config) -> list:
  clip = optim_config.get("clip_grad_norm", 0.0)
  return [optax.clip_by_global_norm(clip)] if clip and clip > 0 else []


def decay_mask(params):
  """True where weight decay applies: kernels and tokens, not biases or 1-D params
  (the layer axis of stacked blocks not counted)."""
  def rule(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    return unstacked_ndim(path, leaf) > 1 and name != "bias"
  return jax.tree_util.tree_map_with_path(rule, params)


def adamw(optim_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  mu_dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[
      optim_config.get("moments_dtype", "float32")]
  tx = optax.chain(*_clip(optim_config),
                   optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=1e-8,
                               weight_decay=optim_config.weight_decay, mask=decay_mask,
                               mu_dtype=mu_dtype))
  return accumulate(tx, optim_config)


# --------------------------------------------------------------------- fine-tuning


NO_WEIGHT_DECAY = ("pos_embed", "cls_token")


def _names(path) -> list[str]:
  """Dict keys of a tree path (skips the ``.value`` of logically boxed leaves)."""
  return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def finetune_decay_mask(params):
  """``decay_mask`` plus the official fine-tuning exclusions (``pos_embed``, ``cls_token``)."""
  def rule(path, leaf):
    names = _names(path)
    return (unstacked_ndim(path, leaf) > 1 and names[-1] != "bias"
            and names[0] not in NO_WEIGHT_DECAY)
  return jax.tree_util.tree_map_with_path(rule, params)


STACKED_LAYERS = "stacked"  # the layer id of a scanned model's stacked ``blocks``


def vit_layer_id(top_level_name: str, num_layers: int) -> int | str:
  """Official ``get_layer_id_for_vit`` on our names; ``num_layers`` = depth + 1.

  0 for ``patch_embed``, ``cls_token``, ``pos_embed``; ``i + 1`` for ``blocks_i``;
  ``num_layers`` for everything else (``norm``, ``fc_norm``, ``head``).
  ``STACKED_LAYERS`` for a scanned model's ``blocks`` (ids 1..depth along its layer axis).
  """
  if top_level_name in ("cls_token", "pos_embed", "patch_embed"):
    return 0
  if top_level_name == "blocks":
    return STACKED_LAYERS
  if top_level_name.startswith("blocks_"):
    return int(top_level_name.split("_", 1)[1]) + 1
  return num_layers


def layer_ids(params, depth: int):
  """Tree of official layer ids (``get_layer_id_for_vit``) for a ViT of ``depth`` blocks."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: vit_layer_id(_names(path)[0], depth + 1), params)


def _scale(layer_decay: float, depth: int, layer_id):
  """``layer_decay ** (depth + 1 - id)``; for stacked blocks the ``[depth]`` vector."""
  if layer_id == STACKED_LAYERS:
    return layer_decay ** (depth - jnp.arange(depth, dtype=jnp.float32))
  return float(layer_decay ** (depth + 1 - layer_id))


def layer_lr_scales(params, depth: int, layer_decay: float):
  """Per-leaf lr multiplier ``layer_decay ** (depth + 1 - layer_id)`` (official LLRD);
  a ``[depth]`` vector (one per layer) for a scanned model's stacked blocks."""
  return jax.tree.map(lambda i: _scale(layer_decay, depth, i), layer_ids(params, depth))


def scale_layers(scales: jax.Array) -> optax.GradientTransformation:
  """Scales update slice ``i`` of every (stacked) leaf by ``scales[i]``."""
  def update(updates, state, params=None):
    del params
    def one(u):
      return u * scales.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)
    return jax.tree.map(one, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adamw_layer_decay(optim_config, schedule: optax.Schedule, depth: int,
                      scanned: bool = False) -> optax.GradientTransformation:
  """AdamW with layer-wise lr decay, as the official ``param_groups_lrd`` + AdamW.

  ``optax.adamw`` is ``scale_by_adam -> add_decayed_weights -> scale_by_learning_rate``;
  scaling its output per layer group (``optax.multi_transform`` of ``optax.scale``)
  is the same as giving each group ``lr * layer_decay ** (depth + 1 - layer_id)``,
  the decay term included, exactly as torch's AdamW with per-group lr. Weight
  decay: not on biases, 1-D params, ``pos_embed`` or ``cls_token``. A scanned
  model's stacked ``blocks`` (``scanned``) form one group scaled per layer
  (``scale_layers``).
  """
  layer_decay = float(optim_config.layer_decay)
  groups = {f"layer_{i}": optax.scale(_scale(layer_decay, depth, i))
            for i in range(depth + 2)}
  if scanned:  # (a group only then: unscanned runs keep their optimizer-state tree)
    groups[f"layer_{STACKED_LAYERS}"] = scale_layers(_scale(layer_decay, depth,
                                                            STACKED_LAYERS))
  labels = lambda params: jax.tree.map(lambda i: f"layer_{i}", layer_ids(params, depth))
  tx = optax.chain(*_clip(optim_config),
                   optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=1e-8,
                               weight_decay=optim_config.weight_decay,
                               mask=finetune_decay_mask),
                   optax.multi_transform(groups, labels))
  return accumulate(tx, optim_config)


# --------------------------------------------------------------------- linear probe


def lars(optim_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """LARS as the official ``util/lars.py`` (no weight decay in the probe recipe).

  Per parameter with more than one dimension the update is scaled by
  ``trust_coefficient * |w| / |g + wd * w|`` (1 where either norm is 0); 1-D
  parameters (biases) are not. Then momentum, then the learning rate. This is
  ``optax.lars`` with the momentum applied before the learning rate (the torch
  order), so a warmup does not leak into the momentum buffer; with a constant lr
  the two are identical.
  """
  matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  parts = []
  if optim_config.weight_decay:
    parts.append(optax.add_decayed_weights(optim_config.weight_decay, mask=matrices))
  parts += [optax.masked(optax.scale_by_trust_ratio(
                trust_coefficient=optim_config.trust_coefficient, eps=0.0), matrices),
            optax.trace(decay=optim_config.momentum, nesterov=False),
            optax.scale_by_learning_rate(schedule)]
  return accumulate(optax.chain(*parts), optim_config)
