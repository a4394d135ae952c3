"""Linear probing of a frozen encoder, top to bottom (the official ``main_linprobe.py``).

The classifier is the ViT with cls-token pooling after the encoder's ``norm``;
the head is BatchNorm without affine (eps 1e-6) + a linear layer (trunc-normal
std 0.01). Only the head trains: the encoder runs in inference mode, its output
passes through ``jax.lax.stop_gradient``, the gradient is taken with respect to
the head alone, and the optimizer state covers the head alone, so the encoder
params leave each step exactly as they came in. LARS (momentum 0.9, trust
coefficient 0.001, no weight decay), lr = base_lr * batch / 256 with warmup +
cosine per step; RandomResizedCrop + flip only. ``W/eval.json`` has ``top1``.

Sections: setup, mesh, input, model + optimizer + sharded state, restore or
``init_from``, step, loop, final evaluation.
"""
from __future__ import annotations

import json
import logging
import time

import jax
import ml_collections
import optax

from mae_jax import config_lib
from mae_jax.data import pipeline
from mae_jax.errors import ConfigError
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import checkpoint as ckpt_lib
from mae_jax.train import finetune
from mae_jax.train import metrics as metrics_lib
from mae_jax.train import optim
from mae_jax.train.pretrain import total_steps

HEAD = "head"


def default_config(variant: str = "B/16") -> ml_collections.ConfigDict:
  """Every key ``mae-jax linprobe`` reads, with the official recipe's values (ViT-B)."""
  c = finetune.default_config(variant)
  c.task = "linprobe"
  c.model.update(pool="cls", drop_path=0.0, head_init_std=0.01)
  c.data.augment = ml_collections.ConfigDict(dict(rrc_scale=(0.08, 1.0),
                                                  rrc_ratio=(3 / 4, 4 / 3), hflip=True))
  c.batch_size = 16384
  c.num_epochs = 90
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=0.1, min_lr=0.0, warmup_epochs=10, warmup_steps=0, weight_decay=0.0,
      momentum=0.9, trust_coefficient=0.001, grad_accum_steps=1))
  del c.ema
  return c


def head_only(opt_init):
  return lambda params: opt_init(params[HEAD])


def make_train_step(model, tx, mesh, state_shardings, schedule):
  """``step(state, images, labels) -> (state, metrics)``; only ``params["head"]`` moves."""

  def train_step(state: finetune.ClassifierState, images, labels):
    features = model.apply({"params": state.params}, images, train=False,
                           method=model.features)
    features = jax.lax.stop_gradient(features)

    def loss_fn(head):
      logits, updated = model.apply(
          {"params": {**state.params, HEAD: head}, "batch_stats": state.batch_stats},
          features, train=True, method=model.logits, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params[HEAD])
    updates, opt_state = tx.update(grads, state.opt_state, state.params[HEAD])
    params = {**state.params, HEAD: optax.apply_updates(state.params[HEAD], updates)}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         batch_stats=batch_stats), metrics

  jitted = jax.jit(train_step,
                   in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh),
                                 sharding_lib.batch_sharding(mesh, 1)),
                   out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                   donate_argnums=(0,))

  def step(state, images, labels):
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      return jitted(state, images, labels)
  return step


def validate(config) -> None:
  finetune.validate(config)
  if config.model.get("drop_path", 0.0):
    raise ConfigError("the linear probe runs the encoder in inference mode; "
                      "model.drop_path must be 0.")


def train_and_evaluate(config, workdir: str) -> dict:
  # ------------------------------------------------------------------ setup
  validate(config)
  finetune.check_num_classes(config)
  is_primary = jax.process_index() == 0
  if is_primary:
    ckpt_lib.save_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_primary)
  num_steps, _ = total_steps(config)
  per_epoch = config_lib.steps_per_epoch(config)

  # ------------------------------------------------------------------ mesh
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch(config.batch_size, mesh)

  # ------------------------------------------------------------------ input
  data_iter = pipeline.train_iterator(
      config.data, global_batch=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  images_sharding = sharding_lib.batch_sharding(mesh)
  labels_sharding = sharding_lib.batch_sharding(mesh, 1)

  # ------------------------------------------------------------------ model + optimizer
  model = finetune.build_classifier(config, head_norm=True)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, num_steps,
                                          per_epoch)
  tx = optim.lars(config.optim, schedule)
  image_shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  state, state_shardings = finetune.create_state(model, head_only(tx.init), mesh,
                                                 image_shape, config.seed)

  # ------------------------------------------------------------------ restore / init_from
  ckpt = ckpt_lib.Checkpointer(workdir, config.checkpoint.every_steps,
                               config.checkpoint.keep, config.checkpoint.async_save)
  state, start_step = ckpt.restore_latest(state, data_iter)
  if not start_step:
    params, _ = finetune.initial_params(config, state, model.grid)
    state = state.replace(params=params)

  # ------------------------------------------------------------------ step + eval
  train_step = make_train_step(model, tx, mesh, state_shardings, schedule)
  evaluate = finetune.make_evaluator(model, mesh, config.data, config.data.eval_split,
                                     config.eval_batch_size or config.batch_size,
                                     config.data.eval_max_examples)
  eval_log = finetune.EvalLog(workdir, enabled=is_primary)
  config_dict = json.loads(config.to_json_best_effort())
  every_eval = finetune.eval_interval(config, per_epoch)

  def run_eval(step):
    t0 = time.time()
    result = evaluate({"params": state.params, "batch_stats": state.batch_stats})
    data = eval_log.add(step, result)
    writer.scalars(step, {"eval_top1": result["top1"], "eval_top5": result["top5"]})
    logging.info("eval at step %d: top-1 %.4f top-5 %.4f (best %.4f at step %d; %d "
                 "images, %.0f s)", step, result["top1"], result["top5"], data["best_top1"],
                 data["best_step"], result["num_examples"], time.time() - t0)
    return data

  # ------------------------------------------------------------------ loop
  progress = metrics_lib.Progress(num_steps, start_step, enabled=is_primary)
  step = start_step
  last_eval = None
  t_log, images_since_log = time.time(), 0
  with finetune.Preemption() as preemption:
    while step < num_steps:
      batch = next(data_iter)
      images = jax.make_array_from_process_local_data(images_sharding, batch["image"])
      labels = jax.make_array_from_process_local_data(labels_sharding, batch["label"])
      state, metrics = train_step(state, images, labels)
      step += 1
      images_since_log += config.batch_size

      if step % config.log_every_steps == 0 or step == num_steps:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        finetune.check_finite(step, host, ckpt)
        now = time.time()
        host["img_per_s"] = images_since_log / max(now - t_log, 1e-9)
        t_log, images_since_log = now, 0
        writer.scalars(step, host)
        progress.update(step, {k: host[k] for k in ("loss", "lr", "img_per_s")})

      if step % every_eval == 0 or step == num_steps:
        last_eval = run_eval(step)

      stop = preemption.reached()
      if step % config.checkpoint.every_steps == 0 or step == num_steps or stop:
        ckpt.save(step, state, config_dict, data_iter, force=True)
      if stop:
        ckpt.close()
        writer.close()
        logging.info("preempted at step %d; checkpoint saved. Re-run the same command to "
                     "resume.", step)
        return {"preempted_at": step}

  # ------------------------------------------------------------------ final evaluation
  ckpt.close()
  if last_eval is None:
    last_eval = run_eval(step) if "top1" not in eval_log.data else eval_log.data
  writer.close()
  return {k: v for k, v in last_eval.items() if k != "history"}
