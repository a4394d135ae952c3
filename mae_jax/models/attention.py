"""Attention kernels selectable by ``model.attention``.

* ``xla``: einsum + softmax in float32; returns the attention weights so the
  analysis hooks can record them. The reference implementation.
* ``dot_product``: ``jax.nn.dot_product_attention`` with XLA's implementation
  (runs everywhere, no weights returned).
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU); the
  sequence is padded to a multiple of 64 and masked with key/query lengths,
  since the fused kernel refuses lengths such as 197 in a training step.

All take ``q, k, v`` as ``[B, N, H, hd]`` and return ``([B, N, H, hd], weights|None)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mae_jax.errors import ConfigError

IMPLEMENTATIONS = ("xla", "dot_product", "cudnn")


def _xla(q, k, v):
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k,
                      preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return out, weights


def _pad_to(x, multiple):
  n = x.shape[1]
  pad = (-n) % multiple
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))


def _cudnn(q, k, v):
  b, n = q.shape[:2]
  qp, kp, vp = (_pad_to(t, 64) for t in (q, k, v))
  lengths = jnp.full((b,), n, jnp.int32)
  out = jax.nn.dot_product_attention(qp, kp, vp, implementation="cudnn",
                                     query_seq_lengths=lengths, key_value_seq_lengths=lengths)
  return out[:, :n]


def attend(q, k, v, *, implementation: str = "xla"):
  if implementation == "xla":
    return _xla(q, k, v)
  if implementation == "dot_product":
    return jax.nn.dot_product_attention(q, k, v, implementation="xla"), None
  if implementation == "cudnn":
    return _cudnn(q, k, v), None
  raise ConfigError(f"model.attention={implementation!r} is unknown; choose one of "
                    f"{', '.join(IMPLEMENTATIONS)}.")
