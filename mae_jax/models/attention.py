"""Attention kernels selectable by ``model.attention``.

* ``xla``: einsum + softmax in float32; returns the attention weights so the
  analysis hooks can record them. The reference implementation.
* ``dot_product``: ``jax.nn.dot_product_attention`` with XLA's implementation
  (runs everywhere, no weights returned).
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, NVIDIA GPUs,
  bfloat16/float16 only. The fused kernel refuses sequence lengths such as 197
  in a training step, so the sequence is padded to a multiple of 64 and masked
  with query/key lengths (``padded_attention``; the same padding and masks run on
  the CPU with the XLA kernel in the tests).
* ``splash``: the Pallas splash-attention kernel (TPU). The sequence is padded to
  a multiple of 128 (the kernel's block size) and the padding is masked with
  segment ids; under a mesh the kernel runs per shard (``jax.shard_map``) with
  the batch and heads split by the logical axis rules. Checked against ``xla``
  (outputs and gradients) in Pallas interpret mode on the CPU; its speed on a TPU
  has not been measured yet.

All take ``q, k, v`` as ``[B, N, H, hd]`` and return ``([B, N, H, hd], weights|None)``.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.errors import ConfigError

IMPLEMENTATIONS = ("xla", "dot_product", "cudnn", "splash")

CUDNN_MULTIPLE = 64
SPLASH_MULTIPLE = 128
# The logical axes of q/k/v/out in the model (see mae_jax.models.vit.Attention).
QKV_AXES = ("batch", "length", "act_heads", "kv")


def _xla(q, k, v):
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k,
                      preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return out, weights


def pad_length(x: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads axis 1 (the sequence) of ``[B, N, ...]`` up to a multiple of ``multiple``."""
  pad = (-x.shape[1]) % multiple
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))


def padded_attention(q, k, v, *, multiple: int = CUDNN_MULTIPLE,
                     implementation: str = "cudnn"):
  """``jax.nn.dot_product_attention`` on a sequence padded to ``multiple``.

  Padded keys are excluded by ``key_value_seq_lengths`` and padded queries are
  dropped from the output, so the result (and its gradient) equals unpadded
  attention. ``implementation="xla"`` runs the same padding and masks on any
  backend; that is how the tests check the ``cudnn`` path on a CPU.
  """
  b, n = q.shape[:2]
  if n % multiple == 0:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  qp, kp, vp = (pad_length(t, multiple) for t in (q, k, v))
  lengths = jnp.full((b,), n, jnp.int32)
  out = jax.nn.dot_product_attention(qp, kp, vp, implementation=implementation,
                                     query_seq_lengths=lengths,
                                     key_value_seq_lengths=lengths)
  return out[:, :n]


def _cudnn(q, k, v):
  if jax.default_backend() != "gpu":
    raise ConfigError(f"model.attention=cudnn needs an NVIDIA GPU (the backend is "
                      f"{jax.default_backend()}); use dot_product or xla.")
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ConfigError(f"model.attention=cudnn needs model.dtype=bfloat16 or float16, "
                      f"got {q.dtype}; use dot_product for float32.")
  return padded_attention(q, k, v, multiple=CUDNN_MULTIPLE, implementation="cudnn")


def _splash_kernel(length: int, heads: int, interpret: bool):
  # Built at trace time, not cached: the kernel holds arrays of the trace it was
  # made in (a cached one leaks tracers into the next jit).
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as splash, splash_attention_mask as splash_mask)
  mask = splash_mask.MultiHeadMask([splash_mask.FullMask((length, length))] * heads)
  return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q, k, v, *, interpret: bool):
  """Splash attention on one device's ``[B, N, H, hd]`` block."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel
  n, heads, head_dim = q.shape[1:]
  q = q * jnp.asarray(head_dim ** -0.5, q.dtype)  # the kernel does not scale
  qp, kp, vp = (pad_length(t, SPLASH_MULTIPLE).transpose(0, 2, 1, 3) for t in (q, k, v))
  length = qp.shape[2]
  kernel = _splash_kernel(length, heads, interpret)
  # Real tokens are segment 0, padding segment 1: real queries never see padding.
  segment = (jnp.arange(length) >= n).astype(jnp.int32)
  ids = splash_attention_kernel.SegmentIds(q=segment, kv=segment)
  out = jax.vmap(lambda a, b, c: kernel(a, b, c, segment_ids=ids))(qp, kp, vp)
  return out.transpose(0, 2, 1, 3)[:, :n]


def splash_attention(q, k, v, *, interpret: bool = False):
  """Splash attention, run per shard when a mesh is active (``jax.set_mesh``)."""
  local = functools.partial(_splash_local, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return local(q, k, v)
  # The model's logical rules say how q/k/v are split (batch over data+fsdp, heads
  # over model); without active rules every shard computes the whole (replicated).
  spec = nn.logical_to_mesh_axes(QKV_AXES)
  return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)


def _splash(q, k, v):
  if jax.default_backend() != "tpu":
    raise ConfigError(f"model.attention=splash needs a TPU (the backend is "
                      f"{jax.default_backend()}); use dot_product, or cudnn on a GPU.")
  return splash_attention(q, k, v)


def check_implementation(implementation: str) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ConfigError(f"model.attention={implementation!r} is unknown; choose one of "
                      f"{', '.join(IMPLEMENTATIONS)}.")


def attend(q, k, v, *, implementation: str = "xla"):
  check_implementation(implementation)
  if implementation == "xla":
    return _xla(q, k, v)
  if implementation == "dot_product":
    return jax.nn.dot_product_attention(q, k, v, implementation="xla"), None
  if implementation == "cudnn":
    return _cudnn(q, k, v), None
  return _splash(q, k, v), None
