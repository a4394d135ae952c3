"""What the decoder predicts for each patch (``model.target``), and the one loss.

* ``pixels`` -- the patch's pixels (He et al., 2021), with ``model.norm_pix_loss``
  each patch normalised by its own mean and unbiased variance (``patch_targets``).
* ``hog`` -- MaskFeat's target (Wei et al., 2022): per-channel histograms of oriented
  gradients of the input, flattened per patch (``hog_targets``).
* ``teacher`` -- data2vec 2.0's target (Baevski et al., 2023): the average of the top
  ``model.teacher_top_k`` block outputs of an EMA copy of the encoder run on the
  unmasked input, each instance-normalised (``teacher_targets``; the EMA update is
  ``ema_update``, its momentum ``teacher_momentum``).

Every target is ``[B, L, target_dim]``; ``masked_mse`` is the loss of all three (the
per-patch MSE averaged over the removed patches). Pure functions of arrays: no
TFDS, TensorFlow or ml_collections.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from mae_jax.models import masking

TARGETS = ("pixels", "hog", "teacher")
HOG_BINS = 9   # MaskFeat's 9 orientation bins over 180 degrees
# The encoder parameters the teacher copies (everything the encoder reads).
ENCODER_PREFIXES = ("patch_embed", "cls_token", "blocks", "norm")


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over removed patches (``mask`` = 1) of the per-patch MSE over its values."""
  per_patch = jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def target_dim(target: str, *, patch_size: int, channels: int, tubelet: int = 0,
               hog_cell: int = 8, embed_dim: int = 0) -> int:
  """Values per patch the decoder predicts for ``target``."""
  frames = max(tubelet, 1)
  if target == "pixels":
    return patch_size ** 2 * channels * frames
  if target == "hog":
    return (patch_size // hog_cell) ** 2 * channels * HOG_BINS * frames
  if target == "teacher":
    return embed_dim
  raise ValueError(f"model.target={target!r} must be one of {', '.join(TARGETS)}")


# ------------------------------------------------------------------------ pixels


def patch_targets(images: jax.Array, patch_size: int, norm_pix_loss: bool,
                  tubelet: int = 0, per_channel: bool = False) -> jax.Array:
  """Pixels per patch; with ``norm_pix_loss`` each patch normalised by its own mean and
  unbiased (ddof=1, as ``torch.var``) variance plus 1e-6 (``per_channel``: each channel
  of a patch on its own with ``std + 1e-6``, as VideoMAE)."""
  target = masking.patchify_any(images.astype(jnp.float32), patch_size, tubelet)
  if norm_pix_loss and per_channel:
    b, length, dim = target.shape
    channels = images.shape[-1]
    target = target.reshape(b, length, dim // channels, channels)
    mean = target.mean(axis=-2, keepdims=True)
    std = jnp.sqrt(target.var(axis=-2, keepdims=True, ddof=1))
    return ((target - mean) / (std + 1.0e-6)).reshape(b, length, dim)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
  return target


# ------------------------------------------------------------------------ HOG


def gaussian_window(size: int) -> jax.Array:
  """MaskFeat's ``gkern``: a ``size x size`` Gaussian of std ``size // 2`` summing to 1."""
  n = jnp.arange(size, dtype=jnp.float32)
  w = jnp.exp(-0.5 * ((n - n.mean()) / max(size // 2, 1)) ** 2)
  w2 = jnp.outer(w, w)
  return w2 / w2.sum()


def hog_images(images: jax.Array, patch_size: int, cell: int, bins: int = HOG_BINS
               ) -> jax.Array:
  """``[B, H/cell, W/cell, C, bins]``: MaskFeat's HOG of NHWC ``images``.

  As MaskFeat's ``HOGLayerC``: per channel, Sobel gradients (reflect padding), the
  magnitude weighted by a Gaussian window tiled once per patch (``patch_size`` wide,
  std ``patch_size // 2``; MaskFeat: 16 for its 16x16 patches), the unsigned orientation
  ``atan2(gx, gy)`` hard-binned into ``bins`` over 180 degrees, magnitudes summed
  per ``cell x cell`` cell, and each cell's histogram of each channel L2-normalised.
  """
  x = images.astype(jnp.float32)
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  win = lambda dy, dx: padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
  # cross-correlation with [[1, 0, -1], [2, 0, -2], [1, 0, -1]] and its transpose
  gx = (win(-1, -1) + 2 * win(0, -1) + win(1, -1)) - (win(-1, 1) + 2 * win(0, 1) + win(1, 1))
  gy = (win(-1, -1) + 2 * win(-1, 0) + win(-1, 1)) - (win(1, -1) + 2 * win(1, 0) + win(1, 1))
  magnitude = jnp.sqrt(gx ** 2 + gy ** 2)
  phase = jnp.arctan2(gx, gy) / math.pi * bins          # in [-bins, bins]
  index = jnp.mod(jnp.floor(phase).astype(jnp.int32), bins)
  weight = jnp.tile(gaussian_window(patch_size), (h // patch_size, w // patch_size))
  magnitude = magnitude * weight[None, :, :, None]
  hist = jax.nn.one_hot(index, bins, dtype=jnp.float32) * magnitude[..., None]
  hist = hist.reshape(b, h // cell, cell, w // cell, cell, c, bins).sum(axis=(2, 4))
  norm = jnp.sqrt(jnp.sum(hist ** 2, axis=-1, keepdims=True))
  return hist / jnp.maximum(norm, 1e-12)   # as torch.nn.functional.normalize (eps 1e-12)


def hog_targets(images: jax.Array, patch_size: int, cell: int, tubelet: int = 0
                ) -> jax.Array:
  """``[B, L, (t *) (p/cell)^2 * C * 9]``: HOG per patch, cells in (row, col) order then
  channel then bin; clips (``tubelet > 0``): HOG per frame, the ``t`` frames of a
  spacetime patch first."""
  if tubelet:
    b, t, h, w, c = images.shape
    hist = hog_images(images.reshape(b * t, h, w, c), patch_size, cell)
    hist = hist.reshape(b, t // tubelet, tubelet, *hist.shape[1:])
  else:
    hist = hog_images(images, patch_size, cell)[:, None, None]
    b, h, w, c = images.shape
  per = patch_size // cell
  gt, tt = hist.shape[1], hist.shape[2]
  gh, gw = h // patch_size, w // patch_size
  # [B, gt, tt, gh, per, gw, per, C, bins] -> [B, gt, gh, gw, tt, per, per, C, bins]
  hist = hist.reshape(b, gt, tt, gh, per, gw, per, c, HOG_BINS)
  hist = hist.transpose(0, 1, 3, 5, 2, 4, 6, 7, 8)
  return hist.reshape(b, gt * gh * gw, -1)


# ------------------------------------------------------------------------ teacher


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Each channel normalised over the tokens of its example (``F.instance_norm`` on
  ``[B, D, L]``, as data2vec normalises each target layer)."""
  x = x.astype(jnp.float32)
  mean = x.mean(axis=1, keepdims=True)
  var = x.var(axis=1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def average_top_k(block_outputs: list, k: int) -> jax.Array:
  """The mean of the last ``k`` block outputs ``[B, L, D]``, each instance-normalised."""
  top = block_outputs[-k:]
  return sum(instance_norm(x) for x in top) / len(top)


def encoder_params(params) -> dict:
  """The part of the MAE's params the teacher copies (the encoder's)."""
  return {k: v for k, v in params.items() if k.startswith(ENCODER_PREFIXES)
          and not k.startswith("decoder")}


def teacher_momentum(step, start: float, end: float, steps: int) -> jax.Array:
  """data2vec 2.0's annealed EMA decay: ``start`` at step 0 rising linearly to ``end``
  at ``steps`` and held there."""
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(steps), 1), 0.0, 1.0)
  return start + (end - start) * frac


def ema_update(teacher, params, decay) -> dict:
  """``decay * teacher + (1 - decay) * params`` for each teacher leaf."""
  return optax.incremental_update(encoder_params(params), teacher, 1.0 - decay)


# ------------------------------------------------------------------------ contrastive


def info_nce(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """SimCLR's NT-Xent over a global batch of view pairs ``z1[i]``, ``z2[i]`` ``[B, D]``.

  Cosine similarities over the ``2B`` embeddings; each embedding's positive is the
  other view of its image, its negatives the other ``2B - 2`` embeddings. Called on
  global arrays under ``jit``, the negatives are the whole global batch whatever the
  mesh (XLA gathers them across devices and hosts).
  """
  z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  n = z1.shape[0]
  logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -1e9, logits)   # no self-pairs
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return optax.softmax_cross_entropy_with_integer_labels(logits, positive).mean()


def teacher_targets(model, teacher, params, images: jax.Array) -> jax.Array:
  """The EMA teacher's target for ``images`` (``MaskedAutoencoder.teacher_features`` with
  the encoder params ``teacher`` in place of the student's), without gradients."""
  variables = {"params": {**params, **teacher}}
  return jax.lax.stop_gradient(
      model.apply(variables, images, method=model.teacher_features))
