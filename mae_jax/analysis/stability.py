"""Claim 2: the representations are stable from layer to layer.

Given hidden states ``h_0 .. h_L`` (``h_0`` the input of the first block, ``h_l``
the output of block ``l - 1``), each ``[B, N, D]``, per block ``l``:

* ``relative_change``: mean over tokens of ``||h_{l+1} - h_l|| / ||h_l||``
  (an identity block gives 0, ``f(x) = a x`` gives ``|a - 1|``);
* ``cosine``: mean over tokens of the cosine similarity of ``h_l`` and ``h_{l+1}``;
* ``norm_growth``: ``mean ||h_{l+1}|| / mean ||h_l||`` (token norms), and
  ``token_norm`` the mean token norm of every ``h_l``.

and an empirical Lipschitz estimate of each block ``f`` around the real inputs,
perturbing the patch tokens (cls, a learned constant, is held fixed; its tiny
norm would otherwise let LayerNorm dominate the estimate of the first block):

* ``lipschitz_random``: ``||f(x + d) - f(x)|| / ||d||`` per image for random
  directions ``d`` with ``||d|| = rel_eps ||x||`` (norms over the image's whole
  token sequence), max and mean over the batch;
* ``lipschitz_jacobian``: the spectral norm of the block's Jacobian at ``x`` per
  image by power iteration on ``J^T J`` (``jax.jvp``/``jax.vjp``), max and mean
  over the batch. Both are lower bounds on the block's Lipschitz constant on the
  data; a residual block's is ``>= 1`` near directions its branch ignores.

The cls token (token 0) is excluded from the per-token statistics.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.analysis import hooks
from mae_jax.models.vit import Block


def layer_stability(hiddens, skip_tokens: int = 1) -> dict:
  """Per-block ``relative_change``, ``cosine``, ``norm_growth``; per-layer ``token_norm``."""
  hs = [np.asarray(h, np.float64)[:, skip_tokens:] for h in hiddens]
  norms = [np.linalg.norm(h, axis=-1) for h in hs]                   # [B, N]
  rel, cos, growth = [], [], []
  for l in range(len(hs) - 1):
    a, b = hs[l], hs[l + 1]
    na, nb = norms[l], norms[l + 1]
    diff = np.linalg.norm(b - a, axis=-1)
    rel.append(float(np.mean(diff / np.maximum(na, 1e-12))))
    cos.append(float(np.mean((a * b).sum(-1) / np.maximum(na * nb, 1e-12))))
    growth.append(float(nb.mean() / max(na.mean(), 1e-12)))
  return {"relative_change": rel, "cosine": cos, "norm_growth": growth,
          "token_norm": [float(n.mean()) for n in norms]}


def _per_sample_norm(x):
  return jnp.sqrt(jnp.sum(x.astype(jnp.float32) ** 2, axis=tuple(range(1, x.ndim))))


def _expand(v, x):
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


def random_direction_ratios(fn: Callable, x, key, rel_eps: float = 1e-3,
                            num_directions: int = 4):
  """``[B, num_directions]`` of ``||f(x + d) - f(x)|| / ||d||`` per sample (traceable).

  ``fn`` maps a batch ``[B, ...]`` to ``[B, ...]`` with samples independent.
  """
  x = jnp.asarray(x, jnp.float32)
  fx = fn(x)
  d = jax.random.normal(key, (num_directions,) + x.shape, jnp.float32)
  d = d * (rel_eps * _per_sample_norm(x) / jax.vmap(_per_sample_norm)(d))[
      (...,) + (None,) * (x.ndim - 1)]
  ratios = jax.vmap(lambda dd: _per_sample_norm(fn(x + dd) - fx) / _per_sample_norm(dd))(d)
  return ratios.T


def jacobian_spectral_norm(fn: Callable, x, key, iters: int = 20):
  """``[B]``: per-sample ``||J v||`` after ``iters`` power iterations (traceable)."""
  x = jnp.asarray(x, jnp.float32)
  _, jvp = jax.linearize(fn, x)
  vjp = jax.linear_transpose(jvp, x)
  unit = lambda v: v / _expand(jnp.maximum(_per_sample_norm(v), 1e-30), v)
  v = unit(jax.random.normal(key, x.shape, jnp.float32))
  v = jax.lax.fori_loop(0, iters, lambda _, v: unit(vjp(jvp(v))[0]), v)
  return _per_sample_norm(jvp(v))


def lipschitz(fn: Callable, x, key, rel_eps: float = 1e-3, num_directions: int = 4,
              iters: int = 20) -> dict:
  """Both Lipschitz estimates of ``fn`` around ``x`` (max and mean over the batch)."""
  def both(x, key):
    k1, k2 = jax.random.split(key)
    return (random_direction_ratios(fn, x, k1, rel_eps, num_directions),
            jacobian_spectral_norm(fn, x, k2, iters))
  return _summary(*hooks.jit(both)(jnp.asarray(x, jnp.float32), key))


def _summary(ratios, spectral) -> dict:
  ratios, spectral = np.asarray(ratios), np.asarray(spectral)
  return {"lipschitz_random_max": float(ratios.max()),
          "lipschitz_random_mean": float(ratios.mean()),
          "lipschitz_jacobian_max": float(spectral.max()),
          "lipschitz_jacobian_mean": float(spectral.mean())}


def block_module(model, stack: str) -> Block:
  """A stand-alone ``Block`` with the hyper-parameters of ``model``'s ``stack``."""
  heads = model.num_heads if stack == "blocks" else model.decoder_num_heads
  return Block(heads, mlp_ratio=model.mlp_ratio, dtype=model.dtype,
               param_dtype=model.param_dtype, attention="xla")


def block_function(model, params, stack: str, index: int) -> Callable:
  """``x -> block(x)`` for encoder (``stack="blocks"``) or ``"decoder_blocks"`` block ``index``."""
  block = block_module(model, stack)
  block_params = params[f"{stack}_{index}"]
  return lambda x: block.apply({"params": block_params}, x, True).astype(jnp.float32)


_ESTIMATORS: dict = {}


def patch_token_function(fn: Callable, x, skip_tokens: int = 1) -> tuple[Callable, jax.Array]:
  """``(g, x_patch)`` with ``g(y) = fn(concat(x[:, :skip], y))``: perturb patch tokens only.

  cls is a learned constant, not a function of the image, so the Lipschitz
  estimates perturb the patch tokens and keep cls fixed (outputs: all tokens).
  """
  x = jnp.asarray(x, jnp.float32)
  head = x[:, :skip_tokens]
  return (lambda y: fn(jnp.concatenate([head, y], axis=1))), x[:, skip_tokens:]


def _estimator(block: Block, rel_eps: float, num_directions: int, iters: int):
  """One jitted ``(block_params, x, key) -> (ratios, spectral)`` per block shape."""
  cache_key = (block, rel_eps, num_directions, iters)
  if cache_key not in _ESTIMATORS:
    def estimate(block_params, x, key):
      fn = lambda y: block.apply({"params": block_params}, y, True).astype(jnp.float32)
      g, y = patch_token_function(fn, x)
      k1, k2 = jax.random.split(key)
      return (random_direction_ratios(g, y, k1, rel_eps, num_directions),
              jacobian_spectral_norm(g, y, k2, iters))
    _ESTIMATORS[cache_key] = hooks.jit(estimate)
  return _ESTIMATORS[cache_key]


def analyze(model, params, trace, seed: int = 0, max_images: int = 32,
            rel_eps: float = 1e-3, num_directions: int = 4, iters: int = 12) -> dict:
  """Stability statistics for the encoder and decoder of one captured pass."""
  key = jax.random.key(seed)
  out = {}
  for s, (stack, hiddens) in enumerate((("blocks", trace.encoder_hidden),
                                        ("decoder_blocks", trace.decoder_hidden))):
    stats = layer_stability(hiddens)
    estimate = _estimator(block_module(model, stack), rel_eps, num_directions, iters)
    lips = []
    for i in range(len(hiddens) - 1):
      x = jnp.asarray(hiddens[i][:max_images], jnp.float32)
      ratios, spectral = estimate(params[f"{stack}_{i}"], x,
                                  jax.random.fold_in(key, 1000 * s + i))
      lips.append(_summary(ratios, spectral))
    for name in (lips[0] if lips else ()):
      stats[name] = [entry[name] for entry in lips]
    out["encoder" if stack == "blocks" else "decoder"] = stats
  return out
