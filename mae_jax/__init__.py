"""mae_jax: Masked Autoencoders in JAX/Flax, from one CPU to a TPU pod."""

__version__ = "0.1.0"

# Chooses the gs:// client (etils caches the choice at the first path it sees).
from mae_jax import fileio  # noqa: E402,F401


def load(path, step=None):
  """Opens a workdir (latest or given ``step``) or a ``W/checkpoints/<step>`` directory.

  Any kind: MAE pretraining (or imported), fine-tuning, linear probing, images or
  clips. Returns a ``mae_jax.loading.Loaded``: ``.model``, ``.params``,
  ``.batch_stats``, ``.variables``, ``.config``, ``.step``, ``.kind``, and for a
  classifier ``.predict(uint8_images)`` -> logits.
  """
  from mae_jax import loading
  return loading.load(path, step)
