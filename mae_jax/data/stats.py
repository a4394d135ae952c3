"""Per-channel normalisation statistics (in [0, 1] units) of datasets without their own
``data.mean/std``; every image and clip source reports its ``mean``/``std`` from here."""
from __future__ import annotations

# Per-channel statistics of the Fashion-MNIST training split.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Normalisation of a dataset without its own statistics in ``data.mean/std``."""
  if name == "fashion_mnist":
    return FASHION_MNIST_MEAN, FASHION_MNIST_STD
  if channels == 3:
    return IMAGENET_MEAN, IMAGENET_STD
  return (0.5,), (0.5,)
