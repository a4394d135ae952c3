"""Metrics out of a run: ``W/metrics.jsonl``, TensorBoard, and a progress line.

Only process 0 writes (``enabled=False`` elsewhere). A resumed run first drops the
rows of steps past the checkpoint it resumed from (they are computed again), so
``metrics.jsonl`` holds each step once. Files go through ``mae_jax.fileio``: on a
``gs://`` workdir ``metrics.jsonl`` is rewritten every ``REMOTE_FLUSH_SECONDS`` and
before each checkpoint (``flush``), so every row up to a saved step survives a crash.
TensorBoard events are flushed (a remote file rewritten) as often, by tensorboardX's
writer thread; a killed run may lose the last ``REMOTE_FLUSH_SECONDS`` of them, as on
a local disk.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time

import numpy as np

from mae_jax import fileio

REMOTE_FLUSH_SECONDS = 30.0


def _parsed_rows(path: str):
  """``(line, row)`` for each line of a ``metrics.jsonl`` that parses as a row with a
  step; a torn last line of a killed run is skipped."""
  with fileio.open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
        yield line, row


def _rows_up_to(path: str, step: int) -> list[str]:
  return [line if line.endswith("\n") else line + "\n"
          for line, row in _parsed_rows(path) if row["step"] <= step]


def training_rows(workdir: str) -> list[dict]:
  """The training rows of ``workdir/metrics.jsonl``, one per logged step. Evaluation and
  monitor rows (e.g. ``monitor/knn_top1``), written at the step they measured, have no
  ``loss`` and are left out, as is a torn last line of a killed run."""
  return [row for _, row in _parsed_rows(fileio.join(workdir, "metrics.jsonl"))
          if "loss" in row]


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self._workdir = workdir
    if enabled:
      self._open(resume_step)

  def _open(self, resume_step: int | None) -> None:
    path = fileio.join(self._workdir, "metrics.jsonl")
    kept = None
    if resume_step is not None and fileio.exists(path):
      kept = "".join(_rows_up_to(path, resume_step)).encode("utf-8")
    self._jsonl = fileio.GrowingFile(path, initial=kept)
    self._flushed = time.monotonic()

  def rewind(self, step: int) -> None:
    """Drops the rows past ``step`` (a run that went back to the checkpoint of
    ``step`` computes them again), as a resumed run does."""
    if self.enabled:
      self._jsonl.close()
      self._open(step)

  def event(self, step: int, fields: dict) -> None:
    """A row that is not a measurement (e.g. ``event: recovered``), kept as given."""
    if self.enabled:
      self._jsonl.write((json.dumps({"step": int(step), **fields}) + "\n").encode("utf-8"))
      self.flush()

  def _tensorboard(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter
      fileio.register_tensorboard()
      self._tb = SummaryWriter(fileio.join(self._workdir, "tensorboard"),
                               flush_secs=REMOTE_FLUSH_SECONDS)
    return self._tb

  def scalars(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write((json.dumps(row) + "\n").encode("utf-8"))
    if not self._jsonl.remote or time.monotonic() - self._flushed > REMOTE_FLUSH_SECONDS:
      self.flush()
    tb = self._tensorboard()
    for k, v in metrics.items():
      tb.add_scalar(k, float(v), int(step))

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """``image``: uint8 [H, W, C]."""
    if self.enabled:
      self._tensorboard().add_image(tag, image, int(step), dataformats="HWC")

  def flush(self) -> None:
    """Makes every row written so far durable (a remote file is rewritten), and the
    TensorBoard events its writer thread has taken so far."""
    if self.enabled:
      self._jsonl.flush()
      self._flushed = time.monotonic()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


TIME_PARTS = ("setup", "compile", "input_wait", "step", "checkpoint", "eval", "log")


class TimeBreakdown:
  """Where a run's wall time goes, in ``TIME_PARTS``:

  * ``setup``: from the start of the run to its first step, but the compilation
    (mesh, data iterator, model, restore, workdir);
  * ``compile``: the train step's compilation (the memory check's) and the first step,
    which waits for it;
  * ``input_wait``: blocked on the data iterator (and making the batch's global arrays);
  * ``step``: the train steps (dispatch and the waits for their results);
  * ``checkpoint``: the loop blocked by saving (an async save's write is not counted);
  * ``eval``: the evaluators;
  * ``log``: writing the metrics rows (``metrics.jsonl``, TensorBoard) and the
    progress line.

  ``row()`` gives the seconds of each part since the previous row (``time/<part>``
  keys of ``metrics.jsonl``; a row's own writing counts in the next); ``summary()``
  the run's totals, the wall time and ``goodput``, the fraction of the wall time that
  was training steps.
  """

  def __init__(self):
    self.start = time.perf_counter()
    self.total = dict.fromkeys(TIME_PARTS, 0.0)
    self._since_row = dict.fromkeys(TIME_PARTS, 0.0)

  def add(self, part: str, seconds: float) -> None:
    self.total[part] += seconds
    self._since_row[part] += seconds

  @contextlib.contextmanager
  def part(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - start)

  def end_setup(self) -> None:
    """Everything so far that was not compilation was setup."""
    elapsed = time.perf_counter() - self.start
    self.add("setup", max(0.0, elapsed - sum(self.total.values())))

  def row(self) -> dict:
    out = {f"time/{k}": round(v, 4) for k, v in self._since_row.items()}
    self._since_row = dict.fromkeys(TIME_PARTS, 0.0)
    return out

  def summary(self) -> dict:
    wall = time.perf_counter() - self.start
    out = {k: round(v, 3) for k, v in self.total.items()}
    out["wall"] = round(wall, 3)
    out["goodput"] = round(self.total["step"] / wall, 4) if wall > 0 else 0.0
    return out

  @staticmethod
  def describe(summary: dict) -> str:
    wall = summary["wall"] or 1e-9
    parts = ", ".join(f"{k.replace('_', ' ')} {100 * summary[k] / wall:.0f}%"
                      for k in TIME_PARTS)
    return (f"{wall:.1f} s of wall time: {parts} (goodput {summary['goodput']:.2f}: the "
            "fraction that was training steps)")


class Progress:
  """A progress bar with img/s and ETA on a terminal; plain lines otherwise."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool = True,
               stream=None):
    self.total = total_steps
    self.start = start_step
    self.enabled = enabled
    self.stream = sys.stdout if stream is None else stream  # today's, not import time's
    self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.time()

  def update(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    done = step - self.start
    elapsed = time.time() - self.t0
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = (self.total - step) / rate if rate > 0 and not math.isnan(rate) else float("nan")
    eta_s = "?" if math.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    fields = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    if self.tty:
      width = 24
      filled = int(width * step / max(self.total, 1))
      bar = "#" * filled + "." * (width - filled)
      self.stream.write(f"\r[{bar}] {step}/{self.total} {fields} eta {eta_s}  ")
      if step >= self.total:
        self.stream.write("\n")
    else:
      self.stream.write(f"step {step}/{self.total} {fields} eta {eta_s}\n")
    self.stream.flush()


class ProfileWindow:
  """A ``jax.profiler`` trace of steps ``start_step + 1 .. start_step + num_steps``.

  ``config.profile.start_step`` (0: off) and ``num_steps``; process 0 writes the
  trace to ``W/profile`` (TensorBoard's profile plugin / XProf read it). The trace
  ends with ``block_until_ready`` on the state, so the device work is in it; the
  results do not change.
  """

  def __init__(self, profile_config, workdir: str, enabled: bool = True):
    start = int(profile_config.start_step) if profile_config else 0
    self.start = start if enabled and start > 0 else 0
    self.stop_at = self.start + max(1, int(profile_config.num_steps)) if self.start else 0
    self.directory = fileio.join(workdir, "profile")
    self.active = False

  def before_step(self, step: int) -> None:
    if self.start and step == self.start and not self.active:
      import jax
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, state) -> None:
    if self.active and step >= self.stop_at:
      self.stop(state)

  def stop(self, state=None) -> None:
    if self.active:
      import jax
      if state is not None:
        jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
