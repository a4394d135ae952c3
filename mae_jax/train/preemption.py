"""SIGTERM (a preemptible VM going away) as a flag the training loop checks."""
from __future__ import annotations

import logging
import signal

import jax
import numpy as np


class Preemption:
  """Context manager: on SIGTERM, ``reached()`` turns true on every process."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      logging.warning("received signal %d: saving a checkpoint and stopping", signum)
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a notebook worker)
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self) -> bool:
    """All processes agree, so every host saves the same step."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))
