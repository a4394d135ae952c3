"""Sharded state creation and jitted train steps.

``create_sharded`` and ``jit_step`` serve every task; ``create_train_state`` and
``make_train_step`` are the MAE pretraining ones (the step the trainer runs and
the benchmark times). This module imports no TFDS/TensorFlow/ml_collections, so
it runs on a bare JAX installation.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mae_jax.parallel import sharding as sharding_lib
from mae_jax.models import targets
from mae_jax.train.state import TeacherTrainState, TrainState


def to_model_input(images: jax.Array, pixel_stats=None) -> jax.Array:
  """The model's input from a batch as the input pipeline ships it.

  Pixels become float32 ``(x - s mean) / (s std)`` (``pixel_stats`` = ``(mean, std)``
  in units of the pixel type's range, the host's ``augment.normalize`` formula; ``s``
  = 255 for uint8, 65535 for uint16, 1 for float32), so host->device transfers
  carry a byte (uint16: two) per value instead of four. With ``pixel_stats=None``
  the images are taken as already normalised floats.
  """
  if pixel_stats is None:
    return images
  scales = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}  # data.arrays.PIXEL_SCALES
  if images.dtype.name not in scales:
    raise TypeError(f"expected uint8, uint16 or float32 images to normalise, got "
                    f"{images.dtype}")
  mean, std = (jnp.asarray(v, jnp.float32) * scales[images.dtype.name] for v in pixel_stats)
  return (images.astype(jnp.float32) - mean) / std


def init_rngs(seed: int) -> dict:
  key = jax.random.key(seed)
  return {"params": jax.random.fold_in(key, 0), "masking": jax.random.fold_in(key, 1)}


def create_sharded(init: Callable[[], Any], mesh, abstract: bool = False):
  """``(state, shardings)``: ``init()`` run under ``jit`` with sharded outputs.

  ``eval_shape`` gives the logical axes, the rules give NamedShardings, and the
  initialiser runs with those ``out_shardings``: no device ever holds the full
  parameters unless the rules replicate them. ``abstract``: nothing is allocated;
  the state is ``ShapeDtypeStruct``s carrying their shardings (``--dry_run``).
  """
  boxed = jax.eval_shape(init)
  shardings = sharding_lib.shardings_of(boxed, mesh)
  if abstract:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(boxed), shardings), shardings
  with jax.set_mesh(mesh), sharding_lib.logical_rules():
    state = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
  return state, shardings


def jit_step(train_step: Callable, mesh, state_shardings, batch_shardings):
  """``step(state, batch) -> (state, metrics)``: one jit, donated state, metrics
  replicated (every process can read them)."""
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                   donate_argnums=(0,))

  def step(state, batch):
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      return jitted(state, batch)

  def compile(state, batch):
    """The compiled step for these (abstract or real) arguments; the same executable
    a call then runs (explicit shardings: one cache entry)."""
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      return jitted.lower(state, batch).compile()

  step.jitted = jitted
  step.compile = compile
  return step


# --------------------------------------------------------------------- MAE


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                   seed: int = 0):
  """Boxed abstract state (logical axis names kept) via ``jax.eval_shape``."""
  def init():
    variables = model.init(init_rngs(seed), jnp.zeros(image_shape, jnp.float32))
    params = variables["params"]
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    if getattr(model, "target", "pixels") == "teacher":  # the EMA teacher starts as a copy
      return TeacherTrainState(**state, teacher=targets.encoder_params(params))
    return TrainState(**state)
  return init, jax.eval_shape(init)


def create_train_state(model, tx, mesh, image_shape, seed: int = 0, abstract: bool = False):
  """MAE parameters and optimizer state created already sharded over ``mesh``
  (``abstract``: only their sharded shapes)."""
  init, _ = abstract_state(model, tx, image_shape, seed)
  return create_sharded(init, mesh, abstract)


def make_train_step(model, tx, mesh, state_shardings, lr_fn, seed: int, pixel_stats=None,
                    teacher_momentum: tuple[float, float, int] = (0.9998, 1.0, 1),
                    accum_steps: int = 1):
  """``step(state, images) -> (state, metrics)``: one jit, donated state.

  The masking RNG is ``fold_in(key(seed), step)``: a resumed run masks exactly as
  an uninterrupted one, whatever the mesh. ``lr_fn(step)`` is the logged lr (the
  one the optimizer applies for this micro-batch, ``optim.applied_lr``). With
  ``pixel_stats`` (mean, std) the step takes uint8 images and normalises them
  (``to_model_input``); without, normalised floats.

  ``model.target=teacher``: the target is the EMA teacher's (``state.teacher``;
  ``targets.teacher_targets``), and after each optimizer update (every
  ``accum_steps`` micro-batches) the teacher moves to ``m * teacher + (1 - m) *
  params`` with ``m = targets.teacher_momentum(updates, *teacher_momentum)``.
  """
  base_key = jax.random.fold_in(jax.random.key(seed), 2)

  def train_step(state: TrainState, images: jax.Array):
    rng = jax.random.fold_in(base_key, state.step)
    images = to_model_input(images, pixel_stats)

    teacher = getattr(state, "teacher", None)
    target = (None if teacher is None else
              targets.teacher_targets(model, teacher, state.params, images))

    def loss_fn(params):
      loss, _, _ = model.apply({"params": params}, images, train=True, target=target,
                               rngs={"masking": rng})
      return loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step),
               "param_norm": optax.tree.norm(params)}  # catches an update to inf
    new = dict(step=state.step + 1, params=params, opt_state=opt_state)
    if teacher is not None:
      applied = (state.step + 1) % accum_steps == 0   # an optimizer update was applied
      momentum = targets.teacher_momentum((state.step + 1) // accum_steps - 1,
                                          *teacher_momentum)
      momentum = jnp.where(applied, momentum, 1.0)
      new["teacher"] = targets.ema_update(teacher, params, momentum)
      metrics["teacher_momentum"] = momentum
    return state.replace(**new), metrics

  return jit_step(train_step, mesh, state_shardings, sharding_lib.batch_sharding(mesh))
