"""The one file layer: every file the project reads or writes goes through here.

A local path and a cloud URL (``gs://bucket/...``) behave the same: workdirs,
``config.json``, ``metrics.jsonl``, ``eval.json``, TensorBoard events,
reconstruction PNGs, export/import files, analysis reports, ``init_from`` and
``mae_jax.load``. Paths are ``etils.epath`` paths, the layer Orbax uses for its
checkpoint directories (Orbax writes the arrays themselves with TensorStore).

``gs://`` goes through fsspec's ``gcsfs`` for every component, Orbax included:
``EPATH_USE_TF`` defaults to ``false`` here, since etils otherwise picks
``tf.io.gfile`` whenever TensorFlow is installed, and that client cannot be pointed
at a storage emulator (``STORAGE_EMULATOR_HOST``), so the code path the tests run
would not be the one a pod runs. ``import mae_jax`` makes this choice; etils keeps
the first choice it sees, so a program that touches an ``epath`` path before
importing ``mae_jax`` keeps TensorFlow's client (which works on real GCS too). Set
``EPATH_USE_TF=true`` to choose TensorFlow's client deliberately.

Object stores have no append and no rename of a whole folder: writers of growing
files (``metrics.jsonl``, TensorBoard events) keep the file's bytes and rewrite the
object whenever they flush (TensorFlow's own GCS writer does the same).
"""
from __future__ import annotations

import builtins
import io
import json
import logging
import os
import posixpath
import shutil
from typing import Any

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402  (after the backend choice above)

logging.getLogger("fsspec").setLevel(logging.WARNING)  # one INFO line per file opened

PathLike = str | os.PathLike
_COPY_CHUNK = 16 << 20


def is_remote(path: PathLike) -> bool:
  """Whether ``path`` is a URL (``gs://...``) rather than a local path."""
  return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
  """``p`` as an ``epath.Path`` (pathlib's API for local paths and URLs alike)."""
  return epath.Path(os.fspath(p))


def absolute(p: PathLike) -> epath.Path:
  """``path(p)``, made absolute when local (Orbax needs absolute directories)."""
  p = os.fspath(p)
  return epath.Path(p if is_remote(p) else os.path.abspath(p))


def join(*parts: PathLike) -> str:
  """``os.path.join`` that keeps ``gs://`` URLs intact."""
  return posixpath.join(*map(os.fspath, parts)) if is_remote(parts[0]) else os.path.join(
      *parts)


def dirname(p: PathLike) -> str:
  return os.path.dirname(os.fspath(p))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  return path(p).is_file()


def same(a: PathLike, b: PathLike) -> bool:
  return path(a) == path(b)


def makedirs(p: PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def glob(p: PathLike, pattern: str) -> list[str]:
  return sorted(str(x) for x in path(p).glob(pattern))


def remove(p: PathLike) -> None:
  path(p).unlink(missing_ok=True)


def open(p: PathLike, mode: str = "r"):  # noqa: A001  (the module's open)
  """A file object; writing creates the parent folders first."""
  target = path(p)
  if mode[0] in "wa":
    target.parent.mkdir(parents=True, exist_ok=True)
  return target.open(mode)


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes ``data`` (creating the parent folders): complete or not at all (an object
  store publishes an object on close; a local file is written aside and renamed)."""
  if is_remote(p):
    with open(p, "wb") as f:
      f.write(data)
    return
  tmp = f"{os.fspath(p)}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
  except OSError as e:  # e.g. a full disk; a failed write names no file by itself
    e.filename = os.fspath(p)  # the file meant, not its temporary name
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  os.replace(tmp, p)


def create_exclusive(p: PathLike, data: bytes) -> bool:
  """Writes ``data`` to ``p`` only if no such file exists; ``False`` if one does. The
  check and the write are one step: ``O_EXCL`` locally, the ``ifGenerationMatch=0``
  precondition on Cloud Storage (gcsfs ``mode="create"``), so of two writers exactly
  one succeeds."""
  if is_remote(p):
    import fsspec
    fs, target = fsspec.core.url_to_fs(os.fspath(p))
    try:
      fs.pipe_file(target, data, mode="create")
    except FileExistsError:
      return False
    return True
  try:
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  return True


def copy_to_local(src: PathLike, local: str) -> None:
  """Streams ``src`` (local or remote) into the local file ``local``."""
  with open(src, "rb") as f, builtins.open(local, "wb") as out:
    shutil.copyfileobj(f, out, _COPY_CHUNK)


def copy_from_local(local: str, dst: PathLike) -> None:
  """Streams the local file ``local`` to ``dst``: complete or not at all, as
  ``write_bytes``; a failed upload leaves nothing under ``dst``."""
  tmp = dst if is_remote(dst) else f"{os.fspath(dst)}.tmp{os.getpid()}"
  try:
    with builtins.open(local, "rb") as f, open(tmp, "wb") as out:
      shutil.copyfileobj(f, out, _COPY_CHUNK)
  except BaseException:
    if exists(tmp):
      remove(tmp)
    raise
  if tmp != dst:
    os.replace(tmp, dst)


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, obj: Any, **dump_kwargs) -> None:
  write_text(p, json.dumps(obj, **dump_kwargs) + "\n")


class GrowingFile:
  """A text or byte file that only grows, written locally by append and remotely by
  rewriting the object on ``flush`` (object stores cannot append).

  ``initial``: the file's content to start from (e.g. the rows a resumed run
  keeps); ``None`` appends to what is there.
  """

  def __init__(self, p: PathLike, initial: bytes | None = None):
    self.path = os.fspath(p)
    self.remote = is_remote(p)
    if self.remote:
      self._buffer = io.BytesIO()
      if initial is None and exists(p):
        initial = read_bytes(p)
      self._buffer.write(initial or b"")
      self._dirty = True
      self.flush()
    else:
      if initial is not None:
        write_bytes(p, initial)
      else:
        makedirs(dirname(self.path) or ".")
      self._file = open(p, "ab")

  def write(self, data: bytes) -> None:
    if self.remote:
      self._buffer.write(data)
      self._dirty = True
    else:
      self._file.write(data)

  def flush(self) -> None:
    if self.remote:
      if self._dirty:
        write_bytes(self.path, self._buffer.getvalue())
        self._dirty = False
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if not self.remote:
      self._file.close()


class _EventFileFactory:
  """tensorboardX's writer factory for URL prefixes: event files through this layer."""

  def open(self, p: str) -> GrowingFile:
    return GrowingFile(p, initial=b"")

  def directory_check(self, p: str) -> None:
    makedirs(p)


def register_tensorboard(scheme: str = "gs") -> None:
  """Makes tensorboardX write ``scheme://`` event files through this layer (its own
  ``gs`` writer needs google-cloud-storage and a separate client configuration)."""
  from tensorboardX import record_writer
  record_writer.register_writer_factory(scheme, _EventFileFactory())


# ------------------------------------------------------------------- reaching a bucket

BUCKET_CHECK_TIMEOUT_S = 20.0  # the whole check; gcsfs alone retries for ~90 s
_REACHED: set[tuple] = set()   # (endpoint, bucket) this process has reached


def _storage_endpoint() -> tuple[str, int]:
  """``(host, port)`` gcsfs talks to: the emulator's, or Cloud Storage's."""
  from urllib.parse import urlparse
  emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if emulator:
    url = urlparse(emulator if "://" in emulator else f"http://{emulator}")
    return url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80)
  return "storage.googleapis.com", 443


def check_bucket(url: str, given_as: str) -> None:
  """A ``StorageError`` within ``BUCKET_CHECK_TIMEOUT_S`` seconds, naming the bucket and
  the likely cause, when the bucket of ``url`` (``gs://bucket/...``) cannot be used:
  no route to Cloud Storage (network, firewall, a wrong ``STORAGE_EMULATOR_HOST``),
  no access (credentials), or no such bucket (the name). Local paths pass; a bucket
  is checked once per process."""
  if not os.fspath(url).startswith("gs://"):
    return
  bucket = os.fspath(url)[len("gs://"):].split("/", 1)[0]
  if (_storage_endpoint(), bucket) in _REACHED:
    return
  import socket
  import threading
  from mae_jax.errors import StorageError
  head = f"{given_as}={url}: bucket {bucket!r}"
  host, port = _storage_endpoint()
  try:
    socket.create_connection((host, port), timeout=5.0).close()
  except OSError as e:
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    raise StorageError(
        f"{head} cannot be reached: no connection to {host}:{port} ({reason}). Likely "
        "the network: this machine has no route to Cloud Storage (no internet, a "
        "firewall or proxy" + (", or a wrong STORAGE_EMULATOR_HOST" if
                              os.environ.get("STORAGE_EMULATOR_HOST") else "") + ").") from None
  outcome: dict = {}

  def probe():
    try:
      import fsspec
      fsspec.filesystem("gs").ls(bucket, detail=False)
      outcome["ok"] = True
    except BaseException as e:  # noqa: BLE001  (reported below)
      outcome["error"] = e

  thread = threading.Thread(target=probe, daemon=True, name="bucket-check")
  thread.start()
  thread.join(BUCKET_CHECK_TIMEOUT_S)
  if thread.is_alive():
    raise StorageError(
        f"{head} gave no answer within {BUCKET_CHECK_TIMEOUT_S:.0f} s although {host} is "
        "reachable. Likely the credentials (no Application Default Credentials: run "
        "`gcloud auth application-default login`, or use a VM whose service account "
        "may read the bucket) or a proxy that holds the connection.")
  error = outcome.get("error")
  if error is None:
    _REACHED.add(((host, port), bucket))
    return
  text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
  if isinstance(error, FileNotFoundError) or "404" in text or "not found" in text.lower():
    cause = ("it does not exist. Check the name (gsutil ls gs://), or create it "
             "(gsutil mb gs://BUCKET)")
  elif isinstance(error, PermissionError) or any(
      s in text for s in ("401", "403", "Anonymous", "credential", "does not have")):
    cause = ("access is denied. Likely the credentials: run `gcloud auth "
             "application-default login`, or give this VM's service account access to "
             "the bucket")
  else:
    cause = "the name, the credentials or the network (see the reason)"
  raise StorageError(f"{head} cannot be used ({text}); {cause}.") from None
