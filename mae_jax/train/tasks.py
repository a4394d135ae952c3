"""What the one loop (``mae_jax.train.loop``) asks of a task and of an evaluator.

A task (``pretrain.PretrainTask``, ``classifier.ClassifierTask``) gives only what
differs between MAE pretraining, fine-tuning and linear probing; an evaluator
(``mae_jax.train.evaluators``) is one periodic measurement. Both are structural:
a class satisfies ``Task`` / ``Evaluator`` by having these members, with these
parameters (``tests/test_structure.py`` checks every task and evaluator).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Built:
  """What ``Task.build`` returns."""
  state: Any            # the train state (``ShapeDtypeStruct`` leaves when abstract)
  state_shardings: Any  # its shardings, the same tree
  train_step: Callable  # jitted ``train_step(state, batch) -> (state, metrics)``
  batch_shardings: Any  # ``Task.batch_shardings(mesh)``: the tree ``device_batch`` returns


@runtime_checkable
class Evaluator(Protocol):
  """One measurement the loop runs every ``every`` steps (0: only at the end) and at
  the end of a run; it logs ``scalars(result)`` and adds ``result`` to ``W/eval.json``
  (``evaluators.EvalLog``)."""

  name: str    # unique among a task's evaluators
  every: int

  def run(self, state, step: int) -> dict:
    """Host scalars (and small values) measured on ``state`` after ``step``."""
    ...

  def scalars(self, result: dict) -> dict:
    """What of ``run``'s result goes to ``metrics.jsonl`` / TensorBoard."""
    ...

  def has_result(self, eval_log) -> bool:
    """Whether a re-run with nothing left to train may skip the final evaluation."""
    ...


@runtime_checkable
class Task(Protocol):
  """Model, optimizer, step, batches and evaluators of one kind of run."""

  name: str                    # the run's kind in logs and the dry-run report
  keep_best: str | None        # a metric whose best checkpoint is kept (or None)
  record_transform: Callable   # the per-record augmentation of ``pipeline.train_iterator``

  def batch_shardings(self, mesh) -> Any:
    """The shardings of what ``device_batch`` returns (a sharding or a dict of them)."""
    ...

  def build(self, mesh, schedule, lr_fn, abstract: bool = False,
            step_seed: int | None = None) -> Built:
    """The sharded train state (only its shapes when ``abstract``) and the jitted step,
    whose randomness (masks, drop path, erasing) comes from ``step_seed``
    (``config.seed`` when None; a run that recovered from a non-finite step gives
    another)."""
    ...

  def initialize(self, state, mesh):
    """The state of a run that starts from no checkpoint (e.g. ``init_from``)."""
    ...

  def device_batch(self, host_batch, step: int, shardings):
    """Global arrays for ``train_step`` from this process's rows of the batch;
    ``shardings``: ``batch_shardings(mesh)`` (``Built.batch_shardings``)."""
    ...

  def abstract_batch(self, shardings):
    """What ``device_batch`` returns, as ``ShapeDtypeStruct``s with ``shardings`` (the
    memory check and ``--dry_run`` compile the step from them); needs no ``build``."""
    ...

  def evaluators(self, mesh, workdir: str, writer) -> list[Evaluator]:
    """The task's evaluators (``mae_jax.train.evaluators``), as its config asks."""
    ...
