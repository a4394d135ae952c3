"""SIGTERM (a preemptible VM going away) and Ctrl-C as a stop the training loop checks.

Either signal makes the loop save a checkpoint at a step every process agrees on and
stop; the command then exits 0 (SIGTERM) or 130 (Ctrl-C) and re-running it resumes.
A second Ctrl-C aborts at once (the default handler is back after the first); the
checkpoints already written stay intact.

Two ways to agree on the step, chosen by whether ``jax.distributed`` is up:

* **Joined processes** (TPU pods, SLURM, ``--num_processes``): JAX's preemption
  service. ``jax.distributed.initialize`` installs a SIGTERM notifier; a notice on any
  process starts a background protocol that picks the step after the fastest
  process's current one, and ``multihost_utils.reached_preemption_sync_point(step)``
  turns true at that step on every process (what Orbax's
  ``CheckpointManager.reached_preemption`` and MaxText use). Checking it is a local
  lookup, no collective on the step's path. This module installs no SIGTERM handler
  then (a Python one would replace JAX's); Ctrl-C is handed to the service by sending
  this process a SIGTERM.
* **One process without ``jax.distributed``**: Python handlers set a flag.
"""
from __future__ import annotations

import logging
import os
import signal

import jax

from mae_jax.errors import ConfigError


class Preemption:
  """Context manager: after SIGTERM or SIGINT, ``reached(step)`` is true at one step,
  the same on every process.

  ``start_step``: the step the loop starts from (every process restores the same
  one); JAX's protocol needs each process's current step from the start.
  """

  def __init__(self, start_step: int = 0):
    self.start_step = start_step
    self.requested = False
    self.signal = None
    self._previous = {}
    self._synced = False

  def __enter__(self):
    self._synced = jax.distributed.is_initialized()
    if self._synced:
      from jax.experimental import multihost_utils
      try:
        multihost_utils.reached_preemption_sync_point(self.start_step)
      except RuntimeError:
        raise ConfigError(
            "jax.distributed is initialized without its preemption service, which a "
            "multi-process run needs to stop every process at one step; set "
            "jax.config.update('jax_enable_preemption_service', True) before "
            "jax.distributed.initialize (mae-jax commands do).") from None

    def handler(signum, frame):
      self.signal = signal.Signals(signum).name
      self.requested = True
      if signum == signal.SIGINT:
        logging.warning("Ctrl-C: saving a checkpoint and stopping (Ctrl-C again aborts at "
                        "once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._synced:  # JAX's notifier tells every process
          os.kill(os.getpid(), signal.SIGTERM)
      else:
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)

    signals = (signal.SIGINT,) if self._synced else (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
      try:
        self._previous[signum] = signal.signal(signum, handler)
      except ValueError:  # not the main thread (e.g. inside a notebook worker)
        pass
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def reached(self, step: int) -> bool:
    """Whether to save and stop after ``step``; call it after every step."""
    if self._synced:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested
