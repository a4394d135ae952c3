"""SIGTERM (a preemptible VM going away) and Ctrl-C as a flag the training loop checks.

Either signal makes the loop save a checkpoint at the next step and stop; the
command then exits 0 (SIGTERM) or 130 (Ctrl-C) and re-running it resumes. A second
Ctrl-C aborts at once (the default handler is back after the first); the
checkpoints already written stay intact.
"""
from __future__ import annotations

import logging
import signal

import jax
import numpy as np


class Preemption:
  """Context manager: on SIGTERM or SIGINT, ``reached()`` turns true on every process."""

  def __init__(self):
    self.requested = False
    self.signal = None
    self._previous = {}

  def __enter__(self):
    def handler(signum, frame):
      self.signal = signal.Signals(signum).name
      self.requested = True
      if signum == signal.SIGINT:
        logging.warning("Ctrl-C: saving a checkpoint and stopping (Ctrl-C again aborts at "
                        "once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
      else:
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[signum] = signal.signal(signum, handler)
      except ValueError:  # not the main thread (e.g. inside a notebook worker)
        pass
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def reached(self) -> bool:
    """All processes agree, so every host saves the same step."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))
