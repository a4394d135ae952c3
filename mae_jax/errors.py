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
  """Training produced a NaN/Inf loss or gradient norm."""
