"""Sharded state creation and the jitted MAE train step.

This is the step the trainer runs and the benchmark times. It imports no
TFDS/TensorFlow/ml_collections, so it runs on a bare JAX installation.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train.state import TrainState


def init_rngs(seed: int) -> dict:
  key = jax.random.key(seed)
  return {"params": jax.random.fold_in(key, 0), "masking": jax.random.fold_in(key, 1)}


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                   seed: int = 0):
  """Boxed abstract state (logical axis names kept) via ``jax.eval_shape``."""
  def init():
    variables = model.init(init_rngs(seed), jnp.zeros(image_shape, jnp.float32))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))
  return init, jax.eval_shape(init)


def create_train_state(model, tx, mesh, image_shape, seed: int = 0):
  """Parameters and optimizer state created already sharded over ``mesh``.

  ``eval_shape`` gives the logical axes, the rules give NamedShardings, and the
  initialiser runs under ``jit`` with those ``out_shardings``: no device ever
  holds the full parameters unless the rules replicate them.
  """
  init, boxed = abstract_state(model, tx, image_shape, seed)
  shardings = sharding_lib.shardings_of(boxed, mesh)
  with jax.set_mesh(mesh), sharding_lib.logical_rules():
    state = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
  return state, shardings


def make_train_step(model, tx, mesh, state_shardings, schedule, seed: int):
  """``step(state, images) -> (state, metrics)``: one jit, donated state.

  The masking RNG is ``fold_in(key(seed), step)``: a resumed run masks exactly as
  an uninterrupted one, whatever the mesh.
  """
  base_key = jax.random.fold_in(jax.random.key(seed), 2)

  def train_step(state: TrainState, images: jax.Array):
    rng = jax.random.fold_in(base_key, state.step)

    def loss_fn(params):
      loss, _, _ = model.apply({"params": params}, images, train=True,
                               rngs={"masking": rng})
      return loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  jitted = jax.jit(train_step,
                   in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                   donate_argnums=(0,))

  def step(state, images):
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      return jitted(state, images)

  step.jitted = jitted
  return step
