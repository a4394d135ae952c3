"""The one training loop: MAE pretraining, fine-tuning and linear probing run here.

Sections, top to bottom: setup, mesh, input, model + optimizer + sharded state,
restore or initialise, workdir, loop (step, non-finite check, log, evaluate,
checkpoint, preemption), final evaluation, cleanup. A task
(``mae_jax.train.pretrain.PretrainTask``, ``mae_jax.train.classifier.ClassifierTask``)
gives only what differs: its model, optimizer and jitted step (``build`` returns
them as ``Built``), its batches (``device_batch``; ``abstract_batch`` gives their
shapes, from which the memory check and ``--dry_run`` compile the step with
``build(..., abstract=True)``), the start of a run without a checkpoint
(``initialize``) and its evaluators. Both contracts are code:
``mae_jax.train.tasks.Task`` and ``mae_jax.train.tasks.Evaluator``.

Every task thus gets the same process-count-independent global batch, the same
non-finite policy (each step's loss, gradient norm and parameter norm are checked, one step late
to keep the device busy, and always before a checkpoint is written: a checkpoint
never holds a non-finite step; ``optim.on_nonfinite=recover`` goes back to the last
good one instead, ``mae_jax.train.recovery``), the same periodic decisions
(``itstime``), the same resume rule: re-running on a workdir continues from its
latest checkpoint exactly (state, data-iterator position, per-step RNG and the
recoveries made), the same persistent compilation cache (``mae_jax.compile_cache``)
and the same account of where the wall time went (``metrics.TimeBreakdown``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import jax
import numpy as np

from mae_jax import checkpoint_io, compile_cache, config_lib, fileio
from mae_jax import workdir as workdir_lib
from mae_jax.data import pipeline
from mae_jax.errors import CheckpointError, ConfigError, NonFiniteLossError
from mae_jax.parallel import memory as memory_lib
from mae_jax.parallel import mesh as mesh_lib
from mae_jax.parallel import sharding as sharding_lib
from mae_jax.train import metrics as metrics_lib
from mae_jax.train import optim
from mae_jax.train import recovery as recovery_lib
from mae_jax.train.evaluators import EvalLog
from mae_jax.train.preemption import Preemption
from mae_jax.train.tasks import Built, Evaluator, Task


INPUT_WAIT_SHOWN = 0.1  # the progress line shows the input-wait fraction above this


def itstime(step: int, every: int, total: int, end: bool = True) -> bool:
  """Whether a periodic action runs after ``step``: every ``every`` steps (0: never)
  and, with ``end``, at the last step."""
  return (every > 0 and step % every == 0) or (end and step == total)


def total_steps(config) -> tuple[int, int]:
  """``(total micro-batches, micro-batches per epoch)`` from num_train_steps or num_epochs.

  Refuses a run or epoch length that ``optim.grad_accum_steps`` does not divide.
  """
  uses_epochs = not (config.num_train_steps and config.num_train_steps > 0)
  warmup_in_epochs = bool(config.optim.get("warmup_epochs", 0)
                          and not config.optim.get("warmup_steps", 0))
  if not uses_epochs:
    per_epoch = config_lib.steps_per_epoch(config) if warmup_in_epochs else 1
    num_steps = int(config.num_train_steps)
  else:
    if config.num_epochs <= 0:
      raise ConfigError("set num_train_steps > 0 or num_epochs > 0.")
    per_epoch = config_lib.steps_per_epoch(config)
    num_steps = int(config.num_epochs * per_epoch)
  optim.check_run_length(config.optim, num_steps, per_epoch,
                         uses_epochs or warmup_in_epochs)
  return num_steps, per_epoch


def global_array(sharding, local, global_shape):
  """The global array whose rows this process holds are ``local``."""
  return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def memory_report(config, task: Task, built: Built, state) -> dict:
  """XLA's per-device memory estimate of ``built.train_step`` on ``state`` (arrays or
  shapes) and the verdict against the device memory (``mae_jax.parallel.memory``)."""
  compiled = built.train_step.compile(state, task.abstract_batch(built.batch_shardings))
  return memory_lib.report(state, compiled, float(config.get("device_memory_gib", 0.0) or 0.0))


def dry_run(config, task: Task) -> dict:
  """``--dry_run``: the mesh, the sharded state's shapes and the compiled train step,
  with nothing allocated, no data read and no workdir written; returns the memory
  report (``mae_jax.parallel.memory.report``) plus the run's layout."""
  compile_cache.configure(config.get("compile_cache_dir", compile_cache.AUTO))
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch(config.batch_size, mesh)
  constant = lambda count: 0.0  # the state's structure and the step's memory need no schedule
  built = task.build(mesh, constant, constant, abstract=True)
  start = time.perf_counter()
  rep = memory_report(config, task, built, built.state)
  rep.update(task=task.name, mesh=dict(mesh.shape), batch_size=int(config.batch_size),
             compile_s=round(time.perf_counter() - start, 2))
  return rep


def _host(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def run(config, workdir: str, task: Task, train: bool = True) -> dict:
  """Trains ``task`` as ``config`` says in ``workdir``; returns the final evaluation.

  ``train=False`` evaluates the workdir's latest checkpoint (every evaluator once)
  and leaves its config and checkpoints as they are.
  """
  # ------------------------------------------------------------------ setup
  clock = metrics_lib.TimeBreakdown()
  compile_cache.configure(config.get("compile_cache_dir", compile_cache.AUTO))
  is_primary = jax.process_index() == 0
  num_steps, per_epoch = total_steps(config)
  base_schedule = optim.learning_rate_schedule(config.optim, config.batch_size, num_steps,
                                               per_epoch)
  recovery = recovery_lib.Recovery(config.optim, optim.accumulation_steps(config.optim))

  # ------------------------------------------------------------------ mesh
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch(config.batch_size, mesh)
  logging.info("%s: mesh %s over %d devices (%d processes)", task.name, dict(mesh.shape),
               jax.device_count(), jax.process_count())

  # ------------------------------------------------------------------ workdir lock
  if not train and not fileio.exists(workdir):
    raise CheckpointError(f"{workdir} does not exist; give the workdir to evaluate.")
  lock = workdir_lib.WorkdirLock(workdir, enabled=is_primary)
  lock.acquire_on_all_processes()

  ckpt = writer = profile = None
  try:
    # ---------------------------------------------------------------- input
    if train and pipeline.resolve_stats(config.data):  # (written to config.json below)
      logging.info("%s: normalising with the training split's statistics", task.name)
    # Each process reads the rows of the global batch its devices hold, so the global
    # batch is the same for any number of processes.
    rows = sharding_lib.process_batch_rows(sharding_lib.batch_sharding(mesh),
                                           config.batch_size)
    data_iter = pipeline.train_iterator(config.data, global_batch=config.batch_size,
                                        seed=config.seed, rows=rows,
                                        transform=task.record_transform)

    ckpt = checkpoint_io.Checkpointer(workdir, config.checkpoint.every_steps,
                                      config.checkpoint.keep, config.checkpoint.async_save,
                                      keep_best=task.keep_best)
    restored = ckpt.latest_step() is not None
    if restored and train:  # the recoveries a resumed run made (their seed, lr, drops)
      recovery.load(ckpt.read_recovery(ckpt.latest_step()))

    # ---------------------------------------------------------------- model + optimizer
    def build() -> Built:
      schedule = recovery.schedule(base_schedule)
      return task.build(mesh, schedule, optim.applied_lr(schedule, config.optim),
                        step_seed=recovery.step_seed(config.seed))

    built = build()
    state, train_step = built.state, built.train_step
    logging.info("%s: %s parameters", task.name,
                 f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

    # ---------------------------------------------------------------- restore or initialise
    state, start_step = ckpt.restore_latest(state, data_iter)
    if not train:
      if not restored:
        raise CheckpointError(f"{workdir} has no checkpoint to evaluate.")
      num_steps = start_step
    elif start_step >= num_steps:
      logging.info("already at step %d of %d: nothing to train", start_step, num_steps)
    if not restored:
      state = task.initialize(state, mesh)
    if train and start_step < num_steps:
      # the step's compilation, done now (the first step reuses it) to stop with one
      # line when it clearly cannot fit, before the workdir is written
      with clock.part("compile"):
        memory = memory_report(config, task, built, state)
      logging.info("%s: train step needs ~%.2f GiB per device (XLA estimate)%s", task.name,
                   (memory["peak_bytes_per_device"] or 0) / memory_lib.GIB,
                   "" if memory["fits"] is None else
                   f", {100 * memory['fraction_of_memory']:.0f}% of the device memory")
      memory_lib.check(memory)

    # ---------------------------------------------------------------- workdir
    # Written only now that the config, the data and the checkpoint are known good.
    if is_primary and train:
      workdir_lib.save_config(workdir, config)
    writer = metrics_lib.MetricWriter(workdir, enabled=is_primary, resume_step=start_step)
    evaluators: list[Evaluator] = task.evaluators(mesh, workdir, writer)
    eval_log = EvalLog(workdir, best_metric=task.keep_best, enabled=is_primary)
    config_dict = json.loads(config.to_json_best_effort())

    def last_good() -> str:
      steps = ckpt.all_steps()
      return f"step {max(steps)} in {ckpt.directory}" if steps else "none"

    def check_finite(step: int, host: dict) -> None:
      if not all(np.isfinite(v) for v in host.values()):
        ckpt.wait()
        made = (f" ({len(recovery.events)} recoveries made, optim.recover.max_events="
                f"{recovery.max_events})" if recovery.enabled else "")
        raise NonFiniteLossError(
            f"non-finite loss/gradient at step {step} ({host}){made}; last good checkpoint: "
            f"{last_good()}. Lower optim.base_lr, set optim.clip_grad_norm (e.g. 1.0), "
            "use float32 (model.dtype), or let the run go back and skip the batch "
            "(optim.on_nonfinite=recover).", step=step,
            cause=recovery_lib.nonfinite_cause(host))

    def go_back(error: NonFiniteLossError) -> int:
      """``optim.on_nonfinite=recover``: the state and the data position of the last good
      checkpoint, and a step with new randomness (``train/recovery.py``)."""
      nonlocal built, train_step, state
      good = ckpt.latest_step()
      if good is None:
        raise error
      event = recovery.record(error.step, good, error.cause)
      state = None  # (the new step's initial state takes its place)
      built = build()
      train_step = built.train_step
      abstract = checkpoint_io.abstract_of(built.state)
      built = dataclasses.replace(built, state=None)  # (freed before the restore)
      state = ckpt.restore(good, abstract, data_iter)
      writer.rewind(good)
      writer.event(error.step, {"event": "recovered", **{k: event[k] for k in (
          "cause", "restored_step", "batches_dropped")}, "recoveries": len(recovery.events)})
      logging.warning(
          "non-finite %s at step %d: back to the checkpoint of step %d, %d batch(es) "
          "dropped, new randomness%s (recovery %d of at most %d)", event["cause"],
          error.step, good, event["batches_dropped"],
          f", lr x{recovery.lr_factor:g} for {recovery.cooldown_steps} steps"
          if recovery.lr_factor != 1 and recovery.cooldown_steps else "",
          len(recovery.events), recovery.max_events)
      return good

    def evaluate(step: int, evaluator: Evaluator) -> dict:
      with clock.part("eval"):
        result = evaluator.run(state, step)
      logged = evaluator.scalars(result)
      if logged:
        writer.scalars(step, logged)
      eval_log.add(step, result)
      return result

    def save(step: int, metrics, best: dict | None) -> None:
      with clock.part("step"):  # the wait for this step's results
        check_finite(step, _host(metrics))
      with clock.part("checkpoint"):
        writer.flush()  # every row up to a checkpoint is kept (a remote file is rewritten)
        ckpt.save(step, state, config_dict, data_iter, force=True, metrics=best,
                  recovery=recovery.state())
        if best:
          ckpt.wait()
      if best:  # name the kept checkpoint of the best evaluation (ties: the earliest)
        kept = ckpt.all_steps()
        best_step = eval_log.data.get("best_step")
        best_step = best_step if best_step in kept else ckpt.best_step()
        if best_step is not None:
          eval_log.note(best_checkpoint=str(ckpt.directory / str(best_step)))

    # ---------------------------------------------------------------- loop
    progress = metrics_lib.Progress(num_steps, start_step, enabled=is_primary)
    profile = metrics_lib.ProfileWindow(config.get("profile"), workdir, enabled=is_primary)
    step = start_step
    pending = None  # (step, device metrics) checked one step late
    evaluated_at = {}
    t_log, images_since_log = time.time(), 0
    first = True  # the next step is the first of this step function (it compiles)
    clock.end_setup()
    with Preemption(start_step) as preemption:
      while step < num_steps:
        try:
          with clock.part("input_wait"):
            for _ in range(recovery.batches_to_drop(step)):
              next(data_iter)
            batch = task.device_batch(next(data_iter), step, built.batch_shardings)
          profile.before_step(step)
          with clock.part("compile" if first else "step"):
            state, metrics = train_step(state, batch)
            metrics = recovery.inject(step + 1, metrics)
            if first:  # the compilation, if the memory check's was not reused
              jax.block_until_ready(metrics)
            if pending is not None:
              check_finite(pending[0], _host(pending[1]))
          first = False
          step += 1
          profile.after_step(step, state)
          pending = (step, metrics)
          images_since_log += config.batch_size

          if itstime(step, config.log_every_steps, num_steps):
            with clock.part("step"):
              host = _host(metrics)
            check_finite(step, host)
            now = time.time()
            host["img_per_s"] = images_since_log / max(now - t_log, 1e-9)
            t_log, images_since_log = now, 0
            with clock.part("log"):
              times = clock.row()
              writer.scalars(step, {**host, **times})
              shown = {k: host[k] for k in ("loss", "lr", "img_per_s")}
              waited = times["time/input_wait"] / max(sum(times.values()), 1e-9)
              if waited > INPUT_WAIT_SHOWN:  # the input pipeline holds the run back
                shown["input_wait"] = waited
              progress.update(step, shown)

          best = None
          for evaluator in evaluators:
            if evaluator.every and itstime(step, evaluator.every, num_steps):
              result = evaluate(step, evaluator)
              evaluated_at[evaluator.name] = step
              if task.keep_best in result:
                best = {task.keep_best: result[task.keep_best]}

          stop = preemption.reached(step)
          if itstime(step, config.checkpoint.every_steps, num_steps) or stop or best:
            save(step, metrics, best)
          if stop:
            logging.info("preempted at step %d; checkpoint saved. Re-run the same command "
                         "to resume.", step)
            return {"preempted_at": step, "signal": preemption.signal or "SIGTERM",
                    "time": clock.summary()}
        except NonFiniteLossError as error:
          if not (train and recovery.can_recover() and error.step is not None):
            raise
          with clock.part("checkpoint"):
            step = go_back(error)
          pending, first = None, True
    if pending is not None:
      with clock.part("step"):
        check_finite(pending[0], _host(pending[1]))
    with clock.part("checkpoint"):
      ckpt.wait()

    # ---------------------------------------------------------------- final evaluation
    rerun = num_steps > start_step or not train
    for evaluator in evaluators:
      if evaluated_at.get(evaluator.name) == step:
        continue
      if rerun or not evaluator.has_result(eval_log):
        evaluate(step, evaluator)
    summary = clock.summary()
    logging.info("%s: %s", task.name, metrics_lib.TimeBreakdown.describe(summary))
    eval_log.note(time=summary, **({"recoveries": len(recovery.events)}
                                   if recovery.events else {}))
    results = {k: v for k, v in eval_log.data.items() if k != "history"}
    results["step"] = step
    return results
  finally:
    # ---------------------------------------------------------------- cleanup
    for close in (profile.stop if profile else None, ckpt.close if ckpt else None,
                  writer.close if writer else None, lock.release):
      try:
        if close:
          close()
      except Exception as e:  # never hide the error that ended the run
        logging.warning("while closing: %s: %s", type(e).__name__, e)
