"""mae_jax: Masked Autoencoders in JAX/Flax, from one CPU to a TPU pod."""

__version__ = "0.1.0"

# Chooses the gs:// client (etils caches the choice at the first path it sees).
from mae_jax import fileio  # noqa: E402,F401


def load(path, step=None):
  """Loads a workdir (latest or given ``step``) or a ``W/checkpoints/<step>`` directory.

  Returns an object with ``.model``, ``.params``, ``.config``, ``.step``.
  """
  from mae_jax.train.checkpoint import load as _load
  return _load(path, step)
