"""The MAE train state as checkpoints hold it: its abstract form, and a new workdir.

``abstract_train_state`` gives the sharded shapes a checkpoint of a pretraining run is
restored into (``mae_jax.checkpoint_io.Checkpointer.restore``); ``write_workdir``
writes a workdir holding given params with a fresh optimizer (imports, random
initialisations). Reading and writing checkpoints is ``mae_jax.checkpoint_io``; the
workdir's files are ``mae_jax.workdir``; ``mae_jax.load`` opens a workdir for use.
"""
from __future__ import annotations

import logging

import jax

from mae_jax import checkpoint_io, stacking
from mae_jax import workdir as workdir_lib


def abstract_train_state(config, model, mesh=None, seed: int = 0):
  """(abstract state with shardings, the optimizer) for ``config`` on ``mesh``."""
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax.train import optim, step as step_lib
  tx = optim.adamw(config.optim, lambda count: 0.0)  # the structure needs no schedule
  from mae_jax.models import registry
  _, boxed = step_lib.abstract_state(model, tx, registry.input_shape(config), seed)
  if mesh is None:
    mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, model=1), devices=jax.devices()[:1])
  shardings = sharding_lib.shardings_of(boxed, mesh)
  import flax.linen as nn
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return abstract, tx


def write_workdir(workdir: str, config, params, step: int = 0) -> None:
  """A workdir holding ``params`` (e.g. imported or freshly initialised) at ``step``.

  ``params`` in either block layout; written in the one ``config.model.scan_layers``
  builds.

  The optimizer state is fresh; ``mae-jax pretrain`` on this workdir continues from
  ``step``, and ``mae_jax.load``/``finetune``/``linprobe``/``analyze`` accept it.
  """
  import jax.numpy as jnp
  from mae_jax.models import registry
  from mae_jax.train.state import TrainState
  model = registry.build_mae(config)
  abstract, tx = abstract_train_state(config, model)
  params = stacking.to_layout(params, stacking.is_stacked(abstract.params))
  params = jax.tree.map(lambda a, p: jax.device_put(jnp.asarray(p, a.dtype), a.sharding),
                        abstract.params, params)
  state = TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                     opt_state=tx.init(params))
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoint_io.Checkpointer(workdir, with_data=False, async_save=False)
  try:
    ckpt.save(step, state, config.to_dict(), force=True)
  finally:
    ckpt.close()
  logging.info("wrote %s (step %d)", workdir, step)
