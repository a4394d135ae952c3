"""Masked Autoencoder (He et al., 2021) in Flax linen, following the official order:

patch embed, + pos embed, mask, prepend cls (+ its zero pos embed), encoder blocks,
norm; decoder embed, append mask tokens, unshuffle with ``ids_restore``, + decoder
pos embed, decoder blocks, norm, pixel head, drop cls; MSE on removed patches.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.models import masking, targets
from mae_jax.models.targets import patch_targets  # noqa: F401  (the pixel target)
from mae_jax.models.pos_embed import fixed_table
from mae_jax.models.vit import (LN_EPS, PatchEmbed, constrain, dense, layer_norm, make_blocks,
                                run_blocks, token_init)

Dtype = Any


def reconstruction_loss(images: jax.Array, pred: jax.Array, mask: jax.Array,
                        patch_size: int, norm_pix_loss: bool, tubelet: int = 0,
                        per_channel: bool = False) -> jax.Array:
  """The pixel target's loss: ``targets.masked_mse`` of ``pred`` against
  ``patch_targets`` (with ``norm_pix_loss``, each patch normalised by its own mean and
  unbiased variance; clips by all pixels of a spacetime patch, as MAE-ST;
  ``per_channel``: each channel on its own, as VideoMAE)."""
  target = patch_targets(images, patch_size, norm_pix_loss, tubelet, per_channel)
  return targets.masked_mse(pred, target, mask)


class MaskedAutoencoder(nn.Module):
  """The MAE on images, or with ``tubelet_size > 0`` on clips (MAE-ST, VideoMAE).

  A video model takes ``[B, T, H, W, C]`` clips cut into ``t x p x p`` spacetime
  patches; the encoder, decoder, loss and random masking are the image model's.
  ``masking="tube"`` keeps whole tubes (the same spatial mask on every time step).
  ``use_cls_token``, ``pos_table``, ``decoder_embed_bias``, ``norm_pix_per_channel``
  and ``decoder_norm_eps`` select the variants the PyTorch models differ in
  (VideoMAE: no cls token, a 1-D sinusoid table, no bias in the encoder-to-decoder
  projection, targets normalised per channel and patch with ``std + 1e-6``, and
  its decoder LayerNorm at PyTorch's default eps 1e-5).
  """
  patch_size: int = 16
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  decoder_embed_dim: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  mlp_ratio: float = 4.0
  norm_pix_loss: bool = False
  mask_ratio: float = 0.75
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"
  remat: str = "none"
  tubelet_size: int = 0
  masking: str = "random"   # model.masking: random, block, grid, tube (models/masking.py)
  use_cls_token: bool = True
  pos_table: str = "sincos"
  decoder_embed_bias: bool = True
  norm_pix_per_channel: bool = False
  decoder_norm_eps: float = LN_EPS
  scan_layers: bool = False   # blocks as one nn.scan, stacked params (mae_jax.stacking)
  target: str = "pixels"      # model.target: pixels, hog, teacher (models/targets.py)
  hog_cell: int = 8           # HOG cell side in pixels (divides patch_size)
  teacher_top_k: int = 1      # teacher blocks averaged into the target
  contrastive: float = 0.0    # weight of the InfoNCE term between two masked views (0: off)
  contrastive_temperature: float = 0.1
  contrastive_dim: int = 256  # output width of the projection head

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, attention=self.attention,
              mlp_ratio=self.mlp_ratio, remat=self.remat, scan=self.scan_layers)
    self.patch_embed = PatchEmbed(self.patch_size, self.embed_dim, self.dtype,
                                  self.param_dtype, tubelet=self.tubelet_size)
    if self.use_cls_token:
      self.cls_token = self.param("cls_token", token_init(), (1, 1, self.embed_dim),
                                  self.param_dtype)
    self.blocks = make_blocks("blocks", self.depth, self.num_heads, **kw)
    self.norm = layer_norm("norm", param_dtype=self.param_dtype)
    self.decoder_embed = dense(self.decoder_embed_dim, "decoder_embed", ("embed", None),
                               self.dtype, self.param_dtype, use_bias=self.decoder_embed_bias)
    self.mask_token = self.param("mask_token", token_init(), (1, 1, self.decoder_embed_dim),
                                 self.param_dtype)
    self.decoder_blocks = make_blocks("decoder_blocks", self.decoder_depth,
                                      self.decoder_num_heads, **kw)
    self.decoder_norm = layer_norm("decoder_norm", param_dtype=self.param_dtype,
                                   epsilon=self.decoder_norm_eps)
    self.decoder_pred = dense(self.target_dim, "decoder_pred", ("embed", "vocab"), self.dtype,
                              self.param_dtype)
    if self.contrastive:
      self.contrastive_proj = (
          dense(self.embed_dim, "contrastive_proj_0", ("embed", None), self.dtype,
                self.param_dtype),
          dense(self.contrastive_dim, "contrastive_proj_1", (None, None), self.dtype,
                self.param_dtype))

  @property
  def target_dim(self) -> int:
    """Values the decoder predicts per patch (``targets.target_dim``)."""
    return targets.target_dim(self.target, patch_size=self.patch_size, channels=self.in_chans,
                              tubelet=self.tubelet_size, hog_cell=self.hog_cell,
                              embed_dim=self.embed_dim)

  def _check_channels(self, images: jax.Array):
    what = "[B, T, H, W, C] clips" if self.tubelet_size else "NHWC images"
    if images.shape[-1] != self.in_chans or images.ndim != (5 if self.tubelet_size else 4):
      raise ValueError(f"model expects {self.in_chans}-channel {what}, got shape "
                       f"{images.shape}")

  def _grid(self, images: jax.Array) -> tuple[int, ...]:
    if self.tubelet_size:
      return masking.clip_grid(images.shape[1:4], self.patch_size, self.tubelet_size)
    return masking.grid_size(images.shape[1:3], self.patch_size)

  def _pos(self, dim: int, grid: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(fixed_table(self.pos_table, dim, grid, self.use_cls_token))

  def encode(self, images: jax.Array, *, mask_ratio: float | None = None,
             noise: jax.Array | None = None):
    """Encoder on the visible patches: ``(latent [B, 1+K, D], mask, ids_restore)``.

    ``mask_ratio=0`` with no noise encodes every patch in order (features for
    probes and analysis).
    """
    ratio = self.mask_ratio if mask_ratio is None else mask_ratio
    x, pos, grid = self._embed(images)
    x = constrain(x, ("batch", "length", "act_embed"))
    b, length, _ = x.shape
    if ratio == 0.0 and noise is None:
      mask = jnp.zeros((b, length), jnp.float32)
      ids_restore = jnp.broadcast_to(jnp.arange(length), (b, length))
    else:
      rng = None if noise is not None else self.make_rng("masking")
      x, mask, ids_restore = masking.random_masking(x, ratio, rng=rng, noise=noise,
                                                    strategy=self.masking, grid=grid)
    x = run_blocks(self.blocks, self._with_cls(x, pos), True, self.depth)
    return self.norm(x), mask, ids_restore

  def _embed(self, images: jax.Array):
    """``(patch embeddings + their fixed positions [B, L, D], the table, the grid)``."""
    self._check_channels(images)
    grid = self._grid(images)
    pos = self._pos(self.embed_dim, grid)
    x = self.patch_embed(images).astype(jnp.float32) + pos[None, int(self.use_cls_token):]
    return x, pos, grid

  def _with_cls(self, x: jax.Array, pos: jax.Array) -> jax.Array:
    """``x`` with the cls token (+ its zero position) prepended, if the model has one."""
    if not self.use_cls_token:
      return x
    cls = self.cls_token.astype(jnp.float32) + pos[None, :1]
    return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)

  def teacher_features(self, images: jax.Array) -> jax.Array:
    """``[B, L, D]``: the average of the top ``teacher_top_k`` block outputs on the
    unmasked input, each instance-normalised (data2vec 2.0's target; cls dropped).
    Applied with the EMA teacher's encoder params (``targets.teacher_targets``)."""
    if not isinstance(self.blocks, (list, tuple)):
      raise ValueError("model.target=teacher needs model.scan_layers=False")
    x, pos, _ = self._embed(images)
    x = self._with_cls(x, pos)
    prefix = int(self.use_cls_token)
    outputs = []
    for blk in self.blocks:
      x = blk(x, True)
      outputs.append(x[:, prefix:])
    return targets.average_top_k(outputs, self.teacher_top_k)

  def decode(self, latent: jax.Array, ids_restore: jax.Array,
             grid: tuple[int, ...]) -> jax.Array:
    """Pixel predictions ``[B, L, (t*)p*p*C]`` for every patch (cls dropped)."""
    x = self.decoder_embed(latent).astype(jnp.float32)
    b, length = ids_restore.shape
    prefix = int(self.use_cls_token)
    mask_tokens = jnp.broadcast_to(self.mask_token.astype(jnp.float32),
                                   (b, length + prefix - x.shape[1], x.shape[-1]))
    tokens = jnp.concatenate([x[:, prefix:], mask_tokens], axis=1)
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)
    x = jnp.concatenate([x[:, :prefix], tokens], axis=1)
    x = x + self._pos(self.decoder_embed_dim, grid)[None]
    x = run_blocks(self.decoder_blocks, x, True, self.decoder_depth)
    x = self.decoder_norm(x)
    pred = self.decoder_pred(x)
    return pred[:, prefix:].astype(jnp.float32)

  def __call__(self, images: jax.Array, *, train: bool = True,
               noise: jax.Array | None = None, target: jax.Array | None = None):
    """``(loss, pred [B, L, target_dim], mask [B, L] with 1 = removed)``.

    Masks with the ``"masking"`` RNG stream (``masking`` draws the pattern), or ranks
    patches by ``noise`` exactly as the official code ranks ``torch.rand`` noise,
    whatever the strategy. ``target``: ``[B, L, target_dim]`` given by the caller (the
    EMA teacher's features, ``targets.teacher_targets``); without it the model
    computes its pixel or HOG target from ``images`` (a teacher model: from its own
    encoder, as the EMA teacher is at step 0). ``train`` is accepted for API
    parity; MAE pretraining has no dropout.

    With ``contrastive > 0`` the batch is encoded and decoded twice with independent
    masks (one forward pass over ``2B`` rows, so a step costs about what a batch twice
    as large costs in memory and compute); the loss is the mean reconstruction loss of
    both views plus ``contrastive`` times ``targets.info_nce`` of the projected,
    mean-pooled encoder outputs of the two views; ``pred`` and ``mask`` are the first
    view's.
    """
    del train
    batch = images.shape[0]
    views = 2 if self.contrastive and noise is None else 1
    if target is None:
      target = self.target_of(images)
    if views == 2:
      images = jnp.concatenate([images, images], axis=0)
      target = jnp.concatenate([target, target], axis=0)
    latent, mask, ids_restore = self.encode(images, noise=noise)
    pred = self.decode(latent, ids_restore, self._grid(images))
    loss = targets.masked_mse(pred, target, mask)
    if views == 2:
      pooled = latent[:, int(self.use_cls_token):].mean(axis=1)
      hidden = nn.gelu(self.contrastive_proj[0](pooled), approximate=False)
      z = self.contrastive_proj[1](hidden).astype(jnp.float32)
      loss = loss + self.contrastive * targets.info_nce(
          z[:batch], z[batch:], self.contrastive_temperature)
      pred, mask = pred[:batch], mask[:batch]
    return loss, pred, mask

  def target_of(self, images: jax.Array) -> jax.Array:
    """The target of ``images`` (``[B, L, target_dim]``); for the teacher target, this
    encoder's own features (the train step gives the EMA teacher's instead)."""
    if self.target == "pixels":
      return patch_targets(images, self.patch_size, self.norm_pix_loss, self.tubelet_size,
                           self.norm_pix_per_channel)
    if self.target == "hog":
      return jax.lax.stop_gradient(targets.hog_targets(images, self.patch_size, self.hog_cell,
                                                       self.tubelet_size))
    # the teacher: the train step passes the EMA teacher's features; anything else
    # (init, a quick look) gets this encoder's own, as the teacher is at step 0
    return jax.lax.stop_gradient(self.teacher_features(images))

  def features(self, images: jax.Array) -> jax.Array:
    """Encoder output on all patches, unmasked: ``[B, (1 +) L, D]`` (cls first)."""
    return self.encode(images, mask_ratio=0.0)[0]
