"""The files of a workdir: where things are, the resolved config, the lock.

``W/config.json`` (the resolved config), ``W/checkpoints/<step>`` (Orbax, read and
written by ``mae_jax.checkpoint_io``) and ``W/.lock`` (held while a command trains or
evaluates in ``W``). ``resolve`` accepts a workdir or one of its checkpoint
directories. Local and ``gs://`` paths alike (``mae_jax.fileio``). Below the models
and the trainers: imports nothing from them.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from mae_jax import fileio
from mae_jax.errors import CheckpointError, UserError, os_error_message

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"


def resolve(path: str) -> tuple[str, int | None]:
  """Workdir and step from a workdir or a ``W/checkpoints/<step>`` directory."""
  p = fileio.path(path)
  if not p.exists():
    raise CheckpointError(f"{path} does not exist.")
  if p.name.isdigit() and p.parent.name == CHECKPOINT_DIR:
    return str(p.parent.parent), int(p.name)
  return str(p), None


def kind(config) -> str:
  """What a workdir's config trained: ``"finetune"`` / ``"linprobe"`` (a classifier,
  ``config.task``) or ``"mae"`` (pretraining, or an import)."""
  if "task" in config and "num_classes" in config:
    return str(config.task)
  return "mae"


def modality(config) -> str:
  """``"video"`` for a model of clips (``model.tubelet_size > 0``), else ``"image"``."""
  return "video" if int(config.model.get("tubelet_size", 0) or 0) > 0 else "image"


def require_modality(workdir: str, config, supported: str, use: str, instead: str) -> None:
  """A ``UserError`` in one line when ``workdir`` (its ``config``) holds a model of
  another modality than ``supported`` (``"image"`` or ``"video"``) can take: ``use``
  names what refuses it, ``instead`` what to do."""
  found = modality(config)
  if found != supported:
    detail = (f"model.tubelet_size={config.model.tubelet_size}" if found == "video"
              else "no tubelet_size")
    raise UserError(f"{workdir} holds {'a video' if found == 'video' else 'an image'} "
                    f"model ({detail}); {use} takes {supported} models. {instead}")


def save_config(workdir: str, config) -> None:
  fileio.write_text(fileio.join(workdir, CONFIG_FILE),
                    config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str):
  import ml_collections
  path = fileio.path(workdir) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(f"{workdir} has no {CONFIG_FILE}: not a mae_jax workdir "
                          "(run `mae-jax pretrain` or `mae-jax import` to make one).")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}).") from None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """``W/.lock``, held by process 0 while a command trains or evaluates in ``W``.

  A second run on a workdir in use stops with one line naming the holder (two runs
  would interleave their metrics and race their checkpoint managers). A lock left
  by a killed process on the same host (its pid is gone) is taken over; a preempted
  VM that comes back under its host name does the same. The lock is taken with one
  exclusive create, locally and on ``gs://`` (Cloud Storage's ``ifGenerationMatch=0``),
  so of two runs started together exactly one proceeds.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = fileio.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self.held = False

  def acquire(self) -> str | None:
    """Takes the lock; returns why it cannot (``None`` when held or not needed)."""
    if not self.enabled:
      return None
    import socket
    import time
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
      fileio.makedirs(fileio.dirname(self.path))
    except OSError as e:
      return f"--workdir: {os_error_message(e, 'create the workdir')}"
    for _ in range(2):
      try:
        if fileio.create_exclusive(self.path, json.dumps(me).encode()):
          self.held = True
          return None
        try:
          holder = json.loads(fileio.read_text(self.path))
        except (OSError, ValueError):
          holder = {}
        if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
          logging.warning("taking over %s left by pid %s, which is no longer running",
                          self.path, holder.get("pid"))
          fileio.remove(self.path)
          continue
      except OSError as e:
        return f"--workdir: {os_error_message(e, 'write in the workdir')}"
      who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
             if holder else "another run")
      return (f"{fileio.dirname(self.path)} is in use by {who}; two runs on one workdir "
              "would overwrite each other's checkpoints and metrics. Wait for it to end "
              f"or use another --workdir; if no such run is alive, delete {self.path}.")
    return f"cannot take the lock {self.path}."

  def acquire_on_all_processes(self) -> None:
    """``acquire`` on process 0; every process stops with its error if it fails."""
    error = self.acquire()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      ok = multihost_utils.process_allgather(np.asarray(error is None))
      if not np.all(ok) and error is None:
        error = "process 0 could not lock the workdir; its log says why."
    if error:
      from mae_jax.errors import UserError
      raise UserError(error)

  def release(self) -> None:
    if self.held:
      fileio.remove(self.path)  # already gone is fine
      self.held = False
