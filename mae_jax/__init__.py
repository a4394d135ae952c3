"""mae_jax: Masked Autoencoders in JAX/Flax, from one CPU to a TPU pod."""

__version__ = "0.1.0"


def load(path):
  """Loads a workdir or checkpoint: an object with ``.model``, ``.params``, ``.config``."""
  from mae_jax.train.checkpoint import load as _load
  return _load(path)
