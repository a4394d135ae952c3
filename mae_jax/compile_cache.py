"""JAX's persistent compilation cache for every training run.

A resumed run compiles the same train step as the run before it; on a preemptible TPU
that happens many times per run. With the cache, the compiled program is read from
a folder instead (JAX keys each entry by the program, the compile options, the
devices and the JAX version, so a stale entry is never used; an unreadable one is
compiled again, with a warning).

``compile_cache_dir`` (config key of pretraining, fine-tuning and probing):

* ``"auto"`` (default): ``$MAE_JAX_COMPILE_CACHE_DIR``, else the folder JAX is
  already told (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``), else
  ``$XDG_CACHE_HOME/mae_jax/jax`` (``~/.cache/mae_jax/jax``);
* a path, local or ``gs://`` (JAX writes there through its own file layer);
* ``""``: no cache.

JAX caches programs whose compilation took at least
``jax_persistent_cache_min_compile_time_secs`` (1 s by default; the environment
variable ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets it).
"""
from __future__ import annotations

import logging
import os

import jax

ENV = "MAE_JAX_COMPILE_CACHE_DIR"
AUTO = "auto"


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mae_jax", "jax")


def resolve(value) -> str | None:
  """The folder ``compile_cache_dir=value`` means, or None (no cache)."""
  value = "" if value is None else str(value).strip()
  if value != AUTO:
    return value or None
  if os.environ.get(ENV, "").strip():
    return os.environ[ENV].strip()
  told = jax.config.jax_compilation_cache_dir
  return told or default_dir()


def configure(value) -> str | None:
  """Points JAX's persistent cache at ``resolve(value)`` (or turns it off) before the
  run compiles anything; returns the folder."""
  path = resolve(value)
  if path is None:
    _set(False, None)
    return None
  if not path.startswith("gs://"):
    os.makedirs(path, exist_ok=True)
  _set(True, path)
  logging.info("compilation cache: %s", path)
  return path


def _set(enabled: bool, path: str | None) -> None:
  before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  jax.config.update("jax_enable_compilation_cache", enabled)
  if path is not None:
    jax.config.update("jax_compilation_cache_dir", path)
  after = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  if after != before:
    # JAX opens its cache once per process, at the first compilation: a later run in
    # this process with another setting must have it opened again
    try:
      from jax._src import compilation_cache
      compilation_cache.reset_cache()
    except (ImportError, AttributeError):  # a JAX without it: the first setting stays
      logging.warning("this JAX cannot reopen its compilation cache; a second run in "
                      "this process keeps the first run's cache setting")
