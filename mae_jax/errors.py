"""Errors a user can act on: the CLI prints their message as one line, no traceback."""


class UserError(Exception):
  """Something the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value."""


class DataError(UserError):
  """A missing, unreadable or malformed dataset."""


class CheckpointError(UserError):
  """A checkpoint that cannot be read or does not match the model."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training produced a NaN/Inf loss or gradient norm."""
