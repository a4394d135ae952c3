"""Vision Transformer building blocks shared by the MAE encoder/decoder and the classifier.

Parameter names mirror the official PyTorch modules (``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) so the mapping to PyTorch is a
renaming plus layout changes, kept in ``mae_jax.export``. Every parameter carries
logical axis names; ``mae_jax.parallel.sharding`` maps them to mesh axes.

Kernels: ``qkv`` is ``[embed, 3, heads, head_dim]`` (column parallel over heads),
``proj`` is ``[heads, head_dim, embed]`` (row parallel), ``fc1`` ``[embed, mlp]``,
``fc2`` ``[mlp, embed]``. Initialisation follows the official model: xavier-uniform
with the fans of the equivalent ``nn.Linear``, zero biases, LayerNorm eps 1e-6.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.models import attention as attention_lib

Dtype = Any

LN_EPS = 1e-6


def xavier(in_axis=-2, out_axis=-1):
  return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis,
                                          out_axis=out_axis)


def logical(init: Callable, axes: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """Activation sharding hint; a no-op unless logical axis rules are active."""
  return nn.with_logical_constraint(x, axes)


def layer_norm(name: str, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=logical(nn.initializers.ones, ("embed",)),
                      bias_init=logical(nn.initializers.zeros, ("embed",)))


def dense(features: int, name: str, axes: tuple[str | None, str | None], dtype: Dtype,
          param_dtype: Dtype, kernel_init: Callable | None = None):
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=logical(kernel_init or xavier(), axes),
                  bias_init=logical(nn.initializers.zeros, (axes[1],)))


class DenseNd(nn.Module):
  """Linear layer over the last ``num_in`` axes to ``features`` (a shape).

  Initialised as the equivalent flat ``nn.Linear`` (xavier-uniform over the
  ``[prod(in), prod(features)]`` view, zero bias), with logical axis names on the
  real shapes, so tensor parallelism can split heads cleanly.
  """
  features: tuple[int, ...]
  num_in: int
  axes: tuple[str | None, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[-self.num_in:]
    fan_in, fan_out = math.prod(in_shape), math.prod(self.features)

    def kernel_init(key, shape, dtype):
      return xavier()(key, (fan_in, fan_out), dtype).reshape(shape)

    kernel = self.param("kernel", logical(kernel_init, self.axes),
                        (*in_shape, *self.features), self.param_dtype)
    bias = self.param("bias", logical(nn.initializers.zeros, self.axes[self.num_in:]),
                      self.features, self.param_dtype)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    contract = tuple(range(x.ndim - self.num_in, x.ndim))
    y = jax.lax.dot_general(x, kernel, ((contract, tuple(range(self.num_in))), ((), ())))
    return y + bias


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (with bias)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"width {dim} is not divisible by num_heads {self.num_heads}")
    head_dim = dim // self.num_heads
    qkv = DenseNd((3, self.num_heads, head_dim), 1, ("embed", None, "heads", "kv"),
                  self.dtype, self.param_dtype, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
    out, weights = attention_lib.attend(q, k, v, implementation=self.implementation)
    if weights is not None:
      self.sow("intermediates", "attn_weights", weights)
    out = constrain(out, ("batch", "length", "act_heads", "kv"))
    return DenseNd((dim,), 2, ("heads", "kv", "embed"), self.dtype, self.param_dtype,
                   name="proj")(out)


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    h = dense(self.hidden_dim, "fc1", ("embed", "mlp"), self.dtype, self.param_dtype)(x)
    h = nn.gelu(h, approximate=False)
    h = constrain(h, ("batch", "length", "act_mlp"))
    return dense(dim, "fc2", ("mlp", "embed"), self.dtype, self.param_dtype)(h)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm's ``drop_path``); uses the "dropout" RNG."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    draw = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(draw, x / keep, jnp.zeros_like(x))


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    dim = x.shape[-1]
    x = constrain(x, ("batch", "length", "act_embed"))
    h = layer_norm("norm1", param_dtype=self.param_dtype)(x)
    h = Attention(self.num_heads, self.dtype, self.param_dtype, self.attention,
                  name="attn")(h)
    x = x + DropPath(self.drop_path)(h.astype(x.dtype), deterministic)
    h = layer_norm("norm2", param_dtype=self.param_dtype)(x)
    h = Mlp(int(dim * self.mlp_ratio), self.dtype, self.param_dtype, name="mlp")(h)
    x = x + DropPath(self.drop_path)(h.astype(x.dtype), deterministic)
    self.sow("intermediates", "hidden", x)
    return x


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(remat: str) -> type[Block]:
  """``Block`` wrapped in ``nn.remat`` with the named policy (``none`` = no remat)."""
  if remat not in REMAT_POLICIES:
    from mae_jax.errors import ConfigError
    raise ConfigError(f"model.remat={remat!r} is unknown; choose one of "
                      f"{sorted(REMAT_POLICIES)}.")
  if remat == "none":
    return Block
  # self is argument 0, so `deterministic` is 2.
  return nn.remat(Block, policy=REMAT_POLICIES[remat], static_argnums=(2,))


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection, a stride-p convolution.

  The kernel is ``[p, p, C, D]``; flattened to ``[p*p*C, D]`` it acts on
  ``patchify`` output (row, col, channel order). Xavier-uniform over that
  flattened view, as the official model initialises ``proj.weight.view(D, -1)``.
  """
  patch_size: int
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="proj",
                kernel_init=logical(xavier(in_axis=(0, 1, 2), out_axis=3),
                                    (None, None, None, "embed")),
                bias_init=logical(nn.initializers.zeros, ("embed",)))(images)
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d)


def token_init(std: float = 0.02):
  return logical(nn.initializers.normal(std), (None, None, "embed"))
