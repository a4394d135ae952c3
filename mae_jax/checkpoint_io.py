"""Checkpoint I/O (Orbax): one manager per workdir, storage errors, reading parts.

``Checkpointer`` keeps ``W/checkpoints/<step>`` with the items of a run (the state, the
data-iterator state, the config, and the recovery state of a run that recovered from
a non-finite step): async saves every ``checkpoint.every_steps`` and on
demand (end of run, preemption), the last ``checkpoint.keep`` kept. Orbax writes to a
temporary directory and renames it when complete, so a crash mid-save never damages
the last good checkpoint. Every saved leaf is a global ``jax.Array`` or a scalar;
restoring onto another mesh reshards (the abstract state carries the target
shardings). A task that evaluates (fine-tuning) also keeps its best checkpoint by
``keep_best`` (Orbax's ``BestN`` beside ``LatestN``), whatever ``keep`` drops. A failed
write becomes one ``StorageError`` (``storage_error`` finds the ``OSError`` behind
what tensorstore raises).

Block layout (``model.scan_layers``): a checkpoint holds the state in the layout the
run trained with (stacked ``blocks`` or ``blocks_{i}``), so saving costs no extra
device memory. A restore into a model of the other layout reads the checkpoint in
its own layout and converts once (params and every optimizer moment,
``mae_jax.stacking.convert``); ``restore_params``/``restore_parts`` read only some
top-level parts of the state (no optimizer) and always return the per-block layout
that exports, imports, ``init_from`` and ``mae_jax.load`` use.

Below the models and the trainers: imports nothing from them (the workdir's file
names come from ``mae_jax.workdir``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mae_jax import fileio, stacking
from mae_jax.errors import CheckpointError, StorageError, os_error_message
from mae_jax.workdir import CHECKPOINT_DIR, CONFIG_FILE

RECOVERY_ITEM = "recovery"  # a run's recovery state (train/recovery.py), when it has one


def _grain_handler():
  import grain  # the data layer's package; only needed when the iterator is saved
  return grain.checkpoint.CheckpointHandler()


def use_coordination_service_barriers() -> None:
  """Orbax's barriers between processes through JAX's coordination service.

  By default Orbax syncs processes with ``sync_global_devices``: a device program with a
  collective, which it also runs from the background thread that finalizes an async
  save. Meanwhile the training thread runs its own collective programs, and two
  processes can start the two in different orders and wait for each other forever
  (seen: a 2-process CPU run hung at its last step, right after an async save). The
  coordination service's barrier involves no device. Needs parsed absl flags (every
  ``mae-jax`` command); with one process there is nothing to sync.
  """
  if jax.process_count() == 1:
    return
  from absl import flags
  try:
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True
  except (AttributeError, flags.Error):  # an Orbax without the flag, or unparsed flags
    logging.warning("Orbax's process barriers stay device collectives in this setup")


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` with the items of a run.

  ``keep_best``: the name of a metric passed to ``save(..., metrics=)``; the
  checkpoint with its highest value is kept besides the ``keep`` latest.
  """

  def __init__(self, workdir: str, every_steps: int = 1000, keep: int = 3,
               async_save: bool = True, with_data: bool = True,
               keep_best: str | None = None):
    from orbax.checkpoint import checkpoint_managers
    use_coordination_service_barriers()
    self.directory = fileio.absolute(workdir) / CHECKPOINT_DIR
    if keep < 1:
      raise CheckpointError(f"checkpoint.keep={keep} must be >= 1.")
    policy = checkpoint_managers.LatestN(n=int(keep))
    if keep_best:
      policy = checkpoint_managers.AnyPreservationPolicy([policy, checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[keep_best], n=1,
          keep_checkpoints_without_metrics=False)])
    self.keep_best = keep_best
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(every_steps)), preservation_policy=policy,
        enable_async_checkpointing=bool(async_save), create=True,
        cleanup_tmp_directories=True)  # what an interrupted save left behind
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                RECOVERY_ITEM: ocp.JsonCheckpointHandler()}
    try:  # registered even when unused, so reading a checkpoint's other items is quiet
      handlers["data"] = _grain_handler()
    except ImportError:
      if with_data:
        raise
    self.with_data = with_data
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=handlers)
    # Orbax removes what an interrupted save left behind in a background thread; wait
    # for it, so a run that fails before its first save does not exit under it.
    getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, config_dict: dict, data_iterator=None,
           force: bool = False, metrics: dict | None = None,
           recovery: dict | None = None) -> bool:
    """``recovery``: the run's recovery state (``optim.on_nonfinite=recover``), saved
    beside the state when there is one."""
    items = {"state": ocp.args.StandardSave(state),
             "config": ocp.args.JsonSave(config_dict)}
    if recovery:
      items[RECOVERY_ITEM] = ocp.args.JsonSave(recovery)
    if data_iterator is not None and self.with_data:
      import grain
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._writing(step):
      return self.manager.save(step, args=ocp.args.Composite(**items), force=force,
                               metrics=metrics)

  def _writing(self, step: int | None):
    """Turns a failed write (disk full, read-only, ...) into one ``StorageError``
    naming the path, the reason and the last good checkpoint."""
    import contextlib

    @contextlib.contextmanager
    def guard():
      try:
        yield
      except Exception as e:  # orbax/tensorstore wrap OS errors in several types
        error = storage_error(e)
        if error is None:
          raise
        if error.filename is None:
          error.filename = str(self.directory)
        try:  # what the failed save wrote is incomplete; free its space now
          for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            tmp.rmtree()
        except Exception:  # best effort; the next run's cleanup removes it too
          pass
        kept = [s for s in self.all_steps() if s != step]
        last = (f"the last good checkpoint, {self.directory / str(max(kept))}, is intact"
                if kept else "no checkpoint was written before")
        which = f"The save of step {step}" if step is not None else "A checkpoint save"
        raise StorageError(f"{os_error_message(error, 'write checkpoint')} {which} failed; "
                           f"{last}.") from None
    return guard()

  def best_step(self) -> int | None:
    """The kept step with the best ``keep_best`` metric (``None`` without metrics)."""
    best = self.manager.best_step() if self.keep_best else None
    return None if best is None else int(best)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """State at ``step`` laid out as ``abstract_state``; the iterator is restored in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    step_dir = self.directory / str(step)
    data_state = None
    if data_iterator is not None and self.with_data and (step_dir / "data").exists():
      own = step_dir / "data" / (f"process_{jax.process_index()}-of-"
                                 f"{jax.process_count()}.json")
      if own.exists():
        import grain
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      else:  # saved by a run with another number of processes
        data_state = _shared_data_state(step_dir / "data")
    source = self._check_layout(step, abstract_state)
    if source is not abstract_state:  # saved in the other block layout (scan_layers)
      items["state"] = ocp.args.StandardRestore(source)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax/tensorstore raise many types for a damaged step
      raise CheckpointError(
          f"checkpoint {step_dir} cannot be read ({_first_line(e)}); its files are "
          f"truncated or damaged. {self._without(step)}") from None
    if data_state is not None:
      data_iterator.set_state(data_state)
    if source is not abstract_state:
      logging.info("checkpoint step %d converted to this run's block layout "
                   "(model.scan_layers)", step)
      return convert_layout(restored["state"], abstract_state)
    return restored["state"]

  def read_recovery(self, step: int) -> dict | None:
    """The recovery state saved with ``step``, or None (a checkpoint without one)."""
    if not (self.directory / str(step) / RECOVERY_ITEM).exists():
      return None
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(**{RECOVERY_ITEM: ocp.args.JsonRestore()}))
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} cannot be read ({_first_line(e)}); its "
          f"files are truncated or damaged. {self._without(step)}") from None
    return dict(restored[RECOVERY_ITEM])

  def _without(self, step: int) -> str:
    others = [s for s in self.all_steps() if s != step]
    return (f"Delete {self.directory / str(step)} to resume from step {max(others)}."
            if others else "Start a new workdir.")

  def _check_layout(self, step: int, abstract_state):
    """The abstract state to read ``step`` into: ``abstract_state``, or its counterpart
    in the checkpoint's block layout when the checkpoint was written with the other
    ``model.scan_layers``. Says what differs when the checkpoint holds another model
    (not corruption)."""
    try:
      meta = self.manager.item_metadata(step)["state"]
    except Exception as e:  # the metadata files themselves are unreadable
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} cannot be read ({_first_line(e)}); its "
          f"files are truncated or damaged. {self._without(step)}") from None
    tree = getattr(meta, "tree", meta)
    saved = _flat_shapes(tree)
    wanted = _flat_shapes(abstract_state)
    if saved is None or wanted is None:
      return abstract_state
    source = abstract_state
    if stacking.layouts_differ(saved, wanted):
      try:
        source = stacking.convert(abstract_state, like=tree)
        # another depth as well: the way back does not give this run's shapes
        if _flat_shapes(stacking.convert(source, like=abstract_state)) != wanted:
          raise KeyError("depth")
        wanted = _flat_shapes(source)
      except KeyError:  # report the differences below
        source = abstract_state
    missing = [k for k in wanted if k not in saved]
    extra = [k for k in saved if k not in wanted]
    differ = sorted((k for k in wanted if k in saved and saved[k] != wanted[k]),
                    key=lambda k: (not k.startswith("params"), k))  # params first
    shapes = [f"{k}: checkpoint {list(saved[k][0])} {saved[k][1]}, run "
              f"{list(wanted[k][0])} {wanted[k][1]}" for k in differ]
    if len(shapes) > 4:
      shapes = shapes[:4] + [f"{len(shapes) - 4} more arrays differ"]
    if missing or extra or shapes:
      details = shapes + ([f"missing in the checkpoint: {', '.join(missing[:4])}"]
                              if missing else []) + (
          [f"not in this run: {', '.join(extra[:4])}"] if extra else [])
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} holds another model or optimizer than "
          f"this run's config ({'; '.join(details)}). The checkpoint is intact: run with the "
          f"config it was written with ({self.directory.parent / CONFIG_FILE}), or use a new "
          "workdir.")
    return source

  def restore_latest(self, state, data_iterator=None):
    """``(state, step)``: the latest checkpoint laid out like ``state``, or ``(state, 0)``
    when there is none (``latest_step() is None``)."""
    step = self.latest_step()
    if step is None:  # (a checkpoint at step 0 -- an imported workdir -- is restored)
      return state, 0
    state = self.restore(step, abstract_of(state), data_iterator)
    logging.info("resumed from step %d in %s", step, self.directory)
    return state, step

  def wait(self):
    with self._writing(None):
      self.manager.wait_until_finished()

  def close(self):
    with self._writing(None):
      self.manager.wait_until_finished()
    self.manager.close()


def abstract_of(state):
  """``state``'s shapes, dtypes and shardings (what ``Checkpointer.restore`` reads into)."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      state)


def convert_layout(state, abstract_state):
  """``state`` (read in the other block layout) as ``abstract_state`` lays it out: one
  jitted restack onto the target shardings (``mae_jax.stacking.convert``)."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
  return jax.jit(lambda s: stacking.convert(s, abstract_state), out_shardings=shardings)(state)


def _first_line(e: Exception) -> str:
  text = str(e).splitlines()[0] if str(e) else ""
  text = text.split(" See full TensorStore details")[0][:200]
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def storage_error(e: BaseException) -> OSError | None:
  """The ``OSError`` behind a failed write, also when tensorstore reports it as a
  ``ValueError`` (``... local file "PATH" ... [os_error_code='28']``); else None."""
  import errno
  chain, err = [], e
  while err is not None and len(chain) < 8:
    chain.append(err)
    err = err.__cause__ or err.__context__
  number = next((x.errno for x in chain if isinstance(x, OSError) and x.errno), None)
  path = next((x.filename for x in chain if isinstance(x, OSError) and x.filename), None)
  for x in chain:
    code = re.search(r"os_error_code='?(\d+)", str(x))
    if number is None and code:
      number = int(code.group(1))
    found = re.search(r'(?:local )?file "([^"]+)"', str(x))
    if path is None and found:
      path = found.group(1)
  if number is None:
    return None
  return OSError(number, os.strerror(number) if number in errno.errorcode else str(e), path)


def _flat_shapes(tree) -> dict | None:
  """``{"a/b": (shape, dtype)}`` of a state or its metadata (``None`` if unknown)."""
  try:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"):
            (tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in flat}
  except (AttributeError, TypeError):
    return None


def _shared_data_state(data_dir: epath.Path) -> dict:
  """The data-iterator state of a run saved with a different number of processes.

  Every process's iterator counts global batches (``mae_jax.data.pipeline``), so
  the per-process files agree and any of them positions this run's iterator.
  """
  files = sorted(data_dir.glob("process_*-of-*.json"))
  states = [json.loads(f.read_text()) for f in files]
  if not states or any(s != states[0] for s in states[1:]):
    found = f"{len(files)} files that disagree" if files else "no files"
    raise CheckpointError(
        f"{data_dir} holds no usable data-iterator state for {jax.process_count()} "
        f"process(es) ({found}). Resume with the number of processes that saved it.")
  logging.info("data-iterator state from a run with %d process(es)", len(files))
  return states[0]


def restore_params(workdir: str, step: int | None, sharding) -> tuple[Any, int]:
  """Only the ``params`` of a workdir's checkpoint, as NumPy, laid out by ``sharding``.

  The optimizer state is not read. Every process of a multi-process run calls
  this with a sharding over the run's devices (e.g. replicated over its mesh), so
  any process count can read a checkpoint written with any other.
  """
  parts, step = restore_parts(workdir, step, sharding, ("params",))
  return parts["params"], step


def restore_parts(workdir: str, step: int | None, sharding, keys=("params",)
                  ) -> tuple[dict, int]:
  """``({key: subtree as NumPy}, step)`` for top-level ``keys`` of a checkpoint's state
  (e.g. ``params``, ``batch_stats``), laid out by ``sharding`` while read, in the
  per-block layout (``blocks_{i}``) whichever ``model.scan_layers`` wrote them."""
  directory = fileio.absolute(workdir) / CHECKPOINT_DIR
  use_coordination_service_barriers()
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0,
                                                      create=False),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler(), "data": _grain_handler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{workdir} has no finished checkpoint under {CHECKPOINT_DIR}/.")
    try:
      meta = manager.item_metadata(step)["state"]
      tree = getattr(meta, "tree", meta)
      item = {k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                             sharding=sharding), tree[k])
              for k in keys if k in tree}
      args = ocp.args.PyTreeRestore(
          item=item, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item))
      restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{', '.join(keys)} of {directory / str(step)} cannot be read "
                            f"({_first_line(e)}); its files are truncated or damaged.") from None
  finally:
    manager.close()
  return {k: stacking.per_block(jax.device_get(v)) for k, v in restored.items()}, int(step)
