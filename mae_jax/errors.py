"""Errors a user can act on: the CLI prints their message as one line, no traceback."""


class UserError(Exception):
  """Something the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value."""


class DataError(UserError):
  """A missing, unreadable or malformed dataset."""


class CorruptImageError(DataError):
  """One image (a file or a record) that cannot be read or decoded; the message names it.

  ``what``: the image and the reason alone (for the log line of a skipped image).
  """

  def __init__(self, message: str, what: str | None = None):
    super().__init__(message)
    self.what = what or message


class CheckpointError(UserError):
  """A checkpoint that cannot be read or does not match the model."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training produced a NaN/Inf loss or gradient norm: at ``step``, in ``cause`` (the
  measured values that were not finite)."""

  def __init__(self, message: str, step: int | None = None, cause: str = ""):
    super().__init__(message)
    self.step, self.cause = step, cause


class StorageError(UserError):
  """A path that cannot be read or written: not a directory, read-only, full disk..."""


# What to do about a failed write, by errno name.
_REMEDY = {
    "ENOSPC": "free space there or use another path",
    "EDQUOT": "free space within your quota or use another path",
    "EROFS": "the file system is read-only; choose a writable path",
    "EACCES": "choose a path you may write to",
    "EPERM": "choose a path you may write to",
    "ENOTDIR": "a part of the path is a file, not a directory; choose another path",
    "EEXIST": "choose another path",
    "EISDIR": "it is a directory; give a file path",
}


def os_error_message(e: OSError, action: str = "write") -> str:
  """One line for a failed file-system call: path, reason, errno name and a remedy."""
  import errno as errno_lib
  import os
  name = errno_lib.errorcode.get(e.errno or 0, "")
  reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
  path = e.filename if e.filename is not None else "a file"
  if name == "EEXIST" and isinstance(e.filename, str) and os.path.isfile(e.filename):
    reason = "it is a file, not a directory"
  remedy = _REMEDY.get(name)
  return (f"cannot {action} {path}: {reason}" + (f" ({name})" if name else "")
          + (f"; {remedy}." if remedy else "."))
