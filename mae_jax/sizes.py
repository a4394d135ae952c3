"""``data.image_size`` values: an int (a square) or ``(height, width)``. A leaf module
(no imports from mae_jax), so the schema, the models and the data all read sizes alike."""
from __future__ import annotations


def image_hw(size) -> tuple[int, int]:
  """``(height, width)`` of a ``data.image_size``: an int (a square) or a pair."""
  if isinstance(size, (tuple, list)):
    return int(size[0]), int(size[1])
  return int(size), int(size)
