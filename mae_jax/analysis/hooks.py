"""Run an MAE with its intermediates captured, and map tokens back to patch positions.

``capture`` runs one pretraining forward pass (masking ranked by an explicit
``noise``, so every measure sees the same masks) and returns a ``Trace``:

* ``encoder_hidden[l]`` is the input of encoder block ``l`` (``l = 0``: patch
  embedding + position, cls prepended) and ``encoder_hidden[l + 1]`` its output;
  likewise ``decoder_hidden``. Block outputs come from the blocks' own
  ``sow("intermediates", "hidden", ...)``; the input of block 0 is recorded by a
  Flax method interceptor, so the model code needs no extra hook.
* ``encoder_attn[l]`` / ``decoder_attn[l]``: softmax weights ``[B, H, N, N]``
  sown by ``Attention`` (the ``xla`` implementation; ``analysis_model`` switches
  any other implementation, remat and a scan over layers to ``xla``/``none``/per-block,
  which changes none of the outputs; ``analysis_params`` unstacks scanned params).
* ``encoder_positions`` ``[B, 1 + K]`` and ``decoder_positions`` ``[B, 1 + L]``:
  the patch index (row-major) of every token, ``-1`` for cls. Encoder tokens are
  the visible patches in shuffled order, ``argsort(noise)[:K]``; decoder tokens
  are all patches in order.
"""
from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import stacking
from mae_jax.models import masking
from mae_jax.models.vit import Block

CLS = -1

# XLA's CPU backend spends most of an analysis run optimising code that then runs
# for milliseconds; its cheapest optimisation level compiles ~4x faster here.
FAST_COMPILE_CPU = {"xla_backend_optimization_level": 0,
                    "xla_llvm_disable_expensive_passes": True}


def jit(fn, fast_compile: bool = True, **kwargs):
  """``jax.jit``, with fast-compile options on CPU for code that runs briefly.

  ``fast_compile=False`` for the heavy loops (influence Jacobians, diffusion),
  whose optimised code pays for its longer compilation. Inside another ``jit``
  (where compiler options are not allowed) it is a plain ``jax.jit``.
  """
  plain = jax.jit(fn, **kwargs)
  if not fast_compile or jax.default_backend() != "cpu":
    return plain
  fast = jax.jit(fn, compiler_options=FAST_COMPILE_CPU, **kwargs)

  def call(*args, **kw):
    try:
      return fast(*args, **kw)
    except ValueError as e:
      if "compiler_options" not in str(e):
        raise
      return plain(*args, **kw)

  return call


@dataclasses.dataclass
class Trace:
  """Everything one captured forward pass produced, as NumPy arrays."""
  images: np.ndarray            # [B, H, W, C] the model's (normalised) input
  noise: np.ndarray             # [B, L] the ranking that chose the masks
  loss: float
  pred: np.ndarray              # [B, L, p*p*C]
  mask: np.ndarray              # [B, L], 1 = removed
  ids_restore: np.ndarray       # [B, L]
  grid: tuple[int, int]
  patch_size: int
  encoder_hidden: list          # depth + 1 arrays [B, 1 + K, D]
  decoder_hidden: list          # decoder_depth + 1 arrays [B, 1 + L, Dd]
  encoder_attn: list            # depth arrays [B, H, 1 + K, 1 + K]
  decoder_attn: list            # decoder_depth arrays [B, Hd, 1 + L, 1 + L]
  encoder_positions: np.ndarray  # [B, 1 + K], -1 = cls
  decoder_positions: np.ndarray  # [B, 1 + L], -1 = cls

  @property
  def num_visible(self) -> int:
    return self.encoder_positions.shape[1] - 1


def analysis_model(model):
  """The same model with attention weights available (``xla``), no remat and
  per-block layers (``blocks_{i}``, not one scan), with ``analysis_params``.

  Outputs are unchanged: these settings only choose how the same computation is
  executed (a scanned model's parameters are the same numbers, restacked).
  """
  return model.clone(attention="xla", remat="none", scan_layers=False)


def analysis_params(params):
  """``params`` in the per-block layout ``analysis_model`` expects (either layout in)."""
  return stacking.per_block(params)


def make_noise(seed: int, batch: int, num_patches: int) -> np.ndarray:
  """Uniform ``[B, L]`` ranking noise from a NumPy seed (reproducible across backends)."""
  return np.random.default_rng(seed).random((batch, num_patches)).astype(np.float32)


def token_positions(ids_restore: np.ndarray, num_visible: int) -> tuple[np.ndarray, np.ndarray]:
  """``(encoder_positions [B, 1 + K], decoder_positions [B, 1 + L])`` with -1 for cls."""
  ids_restore = np.asarray(ids_restore)
  b, length = ids_restore.shape
  ids_shuffle = np.argsort(ids_restore, axis=1)     # token j of the shuffle -> patch index
  cls = np.full((b, 1), CLS, np.int64)
  encoder = np.concatenate([cls, ids_shuffle[:, :num_visible]], axis=1)
  decoder = np.concatenate([cls, np.broadcast_to(np.arange(length), (b, length))], axis=1)
  return encoder, decoder


def patch_coords(positions: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(row, col) of patch indices; cls (-1) maps to (-1, -1)."""
  positions = np.asarray(positions)
  gw = grid[1]
  row = np.where(positions >= 0, positions // gw, -1)
  col = np.where(positions >= 0, positions % gw, -1)
  return row, col


def _sorted_layers(tree: dict, prefix: str) -> list[str]:
  pattern = re.compile(rf"^{prefix}_(\d+)$")
  names = [k for k in tree if pattern.match(k)]
  return sorted(names, key=lambda k: int(pattern.match(k).group(1)))


def _forward(model, params, images, noise):
  """One forward pass returning outputs, sown intermediates and block-0 inputs."""
  first_inputs = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, Block) and context.method_name == "__call__":
      if module.name in ("blocks_0", "decoder_blocks_0"):
        first_inputs[module.name] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    (loss, pred, mask), state = model.apply({"params": params}, images, train=False,
                                            noise=noise, mutable=["intermediates"])
  ids_restore = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return loss, pred, mask, ids_restore, state["intermediates"], first_inputs


_FORWARD_CACHE: dict = {}


def _jitted_forward(model):
  key = model
  if key not in _FORWARD_CACHE:
    _FORWARD_CACHE[key] = jit(lambda p, x, n: _forward(model, p, x, n))
  return _FORWARD_CACHE[key]


def _collect(inter: dict, first: dict, prefix: str):
  names = _sorted_layers(inter, prefix)
  hidden = [np.asarray(first[f"{prefix}_0"])] if names else []
  attn = []
  for name in names:
    hidden.append(np.asarray(inter[name]["hidden"][0]))
    attn.append(np.asarray(inter[name]["attn"]["attn_weights"][0]))
  return hidden, attn


def capture(model, params, images, noise, chunk_size: int = 64) -> Trace:
  """Runs ``model`` on ``images`` with masks ranked by ``noise`` and records everything.

  Processed in chunks of ``chunk_size`` images (attention weights are ``O(N^2)``).
  """
  model, params = analysis_model(model), analysis_params(params)
  images = np.asarray(images, np.float32)
  noise = np.asarray(noise, np.float32)
  if noise.shape[0] != images.shape[0]:
    raise ValueError(f"noise has {noise.shape[0]} rows for {images.shape[0]} images")
  fwd = _jitted_forward(model)
  parts = []
  for start in range(0, len(images), chunk_size):
    x = jnp.asarray(images[start:start + chunk_size])
    n = jnp.asarray(noise[start:start + chunk_size])
    loss, pred, mask, ids_restore, inter, first = fwd(params, x, n)
    enc_h, enc_a = _collect(inter, first, "blocks")
    dec_h, dec_a = _collect(inter, first, "decoder_blocks")
    parts.append(dict(loss=float(loss) * float(np.asarray(mask).sum()),
                      masked=float(np.asarray(mask).sum()), pred=np.asarray(pred),
                      mask=np.asarray(mask), ids_restore=np.asarray(ids_restore),
                      enc_h=enc_h, enc_a=enc_a, dec_h=dec_h, dec_a=dec_a))
  cat = lambda key: np.concatenate([p[key] for p in parts])
  catl = lambda key: [np.concatenate(layers) for layers in zip(*[p[key] for p in parts])]
  grid = masking.grid_size(images.shape[1:3], model.patch_size)
  ids_restore = cat("ids_restore")
  num_visible = masking.num_visible(ids_restore.shape[1], model.mask_ratio)
  enc_pos, dec_pos = token_positions(ids_restore, num_visible)
  return Trace(
      images=images, noise=noise,
      loss=sum(p["loss"] for p in parts) / max(sum(p["masked"] for p in parts), 1.0),
      pred=cat("pred"), mask=cat("mask"), ids_restore=ids_restore, grid=grid,
      patch_size=model.patch_size, encoder_hidden=catl("enc_h"),
      decoder_hidden=catl("dec_h"), encoder_attn=catl("enc_a"),
      decoder_attn=catl("dec_a"), encoder_positions=enc_pos, decoder_positions=dec_pos)


def with_mask_ratio(model, mask_ratio: float):
  """The same model (same parameters) masking ``mask_ratio`` of the patches."""
  return model.clone(mask_ratio=float(mask_ratio))
