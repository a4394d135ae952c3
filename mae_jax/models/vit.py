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
from mae_jax.models import masking
from mae_jax.stacking import LAYER_AXIS

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


def layer_norm(name: str, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               epsilon: float = LN_EPS):
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=logical(nn.initializers.ones, ("embed",)),
                      bias_init=logical(nn.initializers.zeros, ("embed",)))


def dense(features: int, name: str, axes: tuple[str | None, str | None], dtype: Dtype,
          param_dtype: Dtype, kernel_init: Callable | None = None, use_bias: bool = True):
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name, use_bias=use_bias,
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
  def __call__(self, x: jax.Array, deterministic: bool, rate: jax.Array | None = None
               ) -> jax.Array:
    """``rate`` (a traced per-layer value inside a scan) overrides ``self.rate``."""
    if deterministic or (rate is None and self.rate == 0.0):
      return x
    keep = 1.0 - (self.rate if rate is None else rate)
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
  def __call__(self, x: jax.Array, deterministic: bool = True,
               drop_path: jax.Array | None = None) -> jax.Array:
    """``drop_path``: this layer's rate when it is a scanned input (else ``self.drop_path``)."""
    dim = x.shape[-1]
    x = constrain(x, ("batch", "length", "act_embed"))
    h = layer_norm("norm1", param_dtype=self.param_dtype)(x)
    h = Attention(self.num_heads, self.dtype, self.param_dtype, self.attention,
                  name="attn")(h)
    x = x + DropPath(self.drop_path)(h.astype(x.dtype), deterministic, drop_path)
    h = layer_norm("norm2", param_dtype=self.param_dtype)(x)
    h = Mlp(int(dim * self.mlp_ratio), self.dtype, self.param_dtype, name="mlp")(h)
    x = x + DropPath(self.drop_path)(h.astype(x.dtype), deterministic, drop_path)
    self.sow("intermediates", "hidden", x)
    return x


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(remat: str, scanned: bool = False) -> type[Block]:
  """``Block`` wrapped in ``nn.remat`` with the named policy (``none`` = no remat).

  Inside a scan (``scanned``) the remat needs no CSE barrier: the loop already keeps
  XLA from merging the recomputation into the forward pass.
  """
  if remat not in REMAT_POLICIES:
    from mae_jax.errors import ConfigError
    raise ConfigError(f"model.remat={remat!r} is unknown; choose one of "
                      f"{sorted(REMAT_POLICIES)}.")
  if remat == "none":
    return Block
  # self is argument 0, so `deterministic` is 2.
  return nn.remat(Block, policy=REMAT_POLICIES[remat], static_argnums=(2,),
                  prevent_cse=not scanned)


def make_blocks(stack: str, depth: int, num_heads: int, *, remat: str, scan: bool,
                drop_path: tuple[float, ...] | None = None, **kw):
  """The blocks of one stack, to assign in ``setup`` and run with ``run_blocks``.

  Unscanned: a list of ``depth`` blocks named ``{stack}_{i}`` (drop-path rate
  ``drop_path[i]``). Scanned (``scan``): one block named ``stack`` whose parameters
  carry a leading ``layers`` axis of size ``depth`` (``mae_jax.stacking``);
  ``run_blocks`` scans it, feeding each layer its drop-path rate.
  """
  block = block_class(remat, scanned=scan)
  if scan:
    return block(num_heads, name=stack, **kw)
  rates = drop_path or (0.0,) * depth
  return [block(num_heads, drop_path=rates[i], name=f"{stack}_{i}", **kw)
          for i in range(depth)]


def run_blocks(blocks, x: jax.Array, deterministic: bool, depth: int,
               drop_path: tuple[float, ...] | None = None) -> jax.Array:
  """``x`` through the blocks of ``make_blocks``: a loop, or one ``nn.scan``."""
  if isinstance(blocks, (list, tuple)):
    for blk in blocks:
      x = blk(x, deterministic)
    return x
  rates = (jnp.asarray(drop_path, jnp.float32)
           if drop_path and any(drop_path) and not deterministic else None)

  def body(block, carry, rate):
    return block(carry, deterministic, rate), None

  scan = nn.scan(body, variable_axes={"params": 0, "intermediates": 0},
                 split_rngs={"params": True, "dropout": True}, in_axes=0, length=depth,
                 metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
  return scan(blocks, x, rates)[0]


class PatchProjection(nn.Module):
  """The kernel ``[*window, C, D]`` and bias ``[D]`` of a stride-``window`` convolution,
  applied as one matmul to ``patchify`` output: the same parameters and numbers as
  ``nn.Conv``, without a convolution. XLA's CPU backend runs the matmul 1.5-2x faster
  for images and ~3x faster for clips (forward + kernel gradient), and accelerators
  run both as a matmul."""
  features: int
  window: tuple[int, ...]
  kernel_init: Callable
  bias_init: Callable
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    channels = patches.shape[-1] // math.prod(self.window)
    kernel = self.param("kernel", self.kernel_init, self.window + (channels, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    kernel = kernel.reshape(-1, self.features).astype(self.dtype)
    return jnp.dot(patches.astype(self.dtype), kernel) + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection, a stride-p convolution computed as a matmul.

  The kernel is ``[p, p, C, D]``; flattened to ``[p*p*C, D]`` it acts on
  ``patchify`` output (row, col, channel order). Xavier-uniform over that
  flattened view, as the official model initialises ``proj.weight.view(D, -1)``.
  With ``tubelet > 0`` it embeds clips ``[B, T, H, W, C]`` with a ``[t, p, p, C, D]``
  kernel (a stride-(t, p, p) 3-D convolution; ``patchify_clips`` order).
  """
  patch_size: int
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  tubelet: int = 0

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    window = (self.tubelet, p, p) if self.tubelet else (p, p)
    inputs = tuple(range(len(window) + 1))
    return PatchProjection(
        self.embed_dim, window, dtype=self.dtype, param_dtype=self.param_dtype, name="proj",
        kernel_init=logical(xavier(in_axis=inputs, out_axis=len(inputs)),
                            (None,) * len(inputs) + ("embed",)),
        bias_init=logical(nn.initializers.zeros, ("embed",)))(
            masking.patchify_any(images, p, self.tubelet))


def token_init(std: float = 0.02):
  return logical(nn.initializers.normal(std), (None, None, "embed"))


# ----------------------------------------------------------------------------- classifier


def fixed_table_init(kind: str, grid: tuple[int, ...], cls_token: bool):
  """Initialiser of a learned ``[1, (1 +) L, D]`` table: the MAE's fixed table
  (``pos_embed.fixed_table``: 2-D or 3-D sin-cos, or VideoMAE's 1-D sinusoid)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    from mae_jax.models.pos_embed import fixed_table
    return jnp.asarray(fixed_table(kind, shape[-1], grid, cls_token), dtype)[None]
  return init


class VisionTransformer(nn.Module):
  """ViT classifier on the MAE encoder's parameter tree, as the official fine-tuning.

  Names ``patch_embed``, ``cls_token``, ``blocks_{i}`` and ``norm`` are the MAE
  encoder's, so a pretraining (or imported) checkpoint loads by name; the classifier
  adds ``pos_embed``, ``fc_norm``/``head_norm`` and ``head``.

  * ``pos_embed`` ``[1, 1 + L, D]`` is a *learned* parameter, as in timm's ViT that
    the official fine-tuning uses. It starts as the fixed sin-cos table (cls row
    zero); loading a checkpoint sets it to the checkpoint's table, bicubically
    resized when the image size differs (``mae_jax.models.load``).
  * ``pool="avg"`` (fine-tuning default): mean of the patch tokens (cls excluded)
    then ``fc_norm``; the encoder's ``norm`` is not used and not created.
    ``pool="cls"`` (linear-probe default): ``norm`` then the cls token.
    ``pool="mean"``: ``norm`` then the mean of the patch tokens (the encoder's own
    features, as the pretraining probe's ``probe.features=mean``; the linear probe
    of a model without a cls token).
  * Clips (``tubelet_size > 0``): ``[B, T, H, W, C]`` inputs of ``num_frames`` frames
    cut into ``t x p x p`` spacetime patches by the video MAE's ``PatchEmbed``; the
    table starts as the MAE's fixed table for the ``(gt, gh, gw)`` grid
    (``pos_table``: ``sincos`` 3-D, or VideoMAE's ``sinusoid_1d``).
    ``use_cls_token=False`` (MAE-ST, VideoMAE) drops the cls token and its row.
  * ``head_norm=True`` puts a BatchNorm without affine (eps 1e-6) before the head,
    as the official linear probe; its statistics live in ``batch_stats``.
  * Drop path rises linearly from 0 to ``drop_path_rate`` over the blocks; the head
    is trunc-normal with ``head_init_std`` (2e-5 fine-tuning, 0.01 probe).
  * ``scan_layers``: the blocks as one ``nn.scan`` with stacked parameters (one
    ``blocks`` subtree, ``mae_jax.stacking``) instead of ``blocks_{i}``.

  ``features(images, train)`` returns the pooled, normalised ``[B, D]`` features and
  ``logits(features, train)`` applies the head; ``__call__`` is both.
  """
  num_classes: int
  image_size: int | tuple[int, int] = 224
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  pool: str = "avg"
  drop_path_rate: float = 0.0
  head_init_std: float = 2e-5
  head_norm: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"
  remat: str = "none"
  scan_layers: bool = False
  tubelet_size: int = 0          # > 0: a video classifier on [B, T, H, W, C] clips
  num_frames: int = 0
  use_cls_token: bool = True
  pos_table: str = "sincos"

  POOLS = ("avg", "cls", "mean")

  @property
  def input_shape(self) -> tuple[int, ...]:
    """``(H, W)`` of an image, ``(T, H, W)`` of a clip."""
    h, w = ((self.image_size, self.image_size) if isinstance(self.image_size, int)
            else tuple(self.image_size))
    return (self.num_frames, h, w) if self.tubelet_size else (h, w)

  @property
  def grid(self) -> tuple[int, ...]:
    """Patches per axis: ``(gh, gw)``, or ``(gt, gh, gw)`` for clips."""
    if self.tubelet_size:
      return masking.clip_grid(self.input_shape, self.patch_size, self.tubelet_size)
    return masking.grid_size(self.input_shape, self.patch_size)

  def setup(self):
    if self.pool not in self.POOLS:
      raise ValueError(f"pool must be one of {self.POOLS}, got {self.pool!r}")
    if self.pool == "cls" and not self.use_cls_token:
      raise ValueError("pool='cls' needs a cls token (use_cls_token=True)")
    grid = self.grid
    prefix = int(self.use_cls_token)
    self.patch_embed = PatchEmbed(self.patch_size, self.embed_dim, self.dtype,
                                  self.param_dtype, tubelet=self.tubelet_size)
    if self.use_cls_token:
      self.cls_token = self.param("cls_token", token_init(), (1, 1, self.embed_dim),
                                  self.param_dtype)
    table_init = fixed_table_init(self.pos_table, grid, self.use_cls_token)
    self.pos_embed = self.param("pos_embed", logical(table_init, (None, None, "embed")),
                                (1, prefix + math.prod(grid), self.embed_dim),
                                self.param_dtype)
    self.drop_rates = tuple(self.drop_path_rate * i / max(self.depth - 1, 1)
                            for i in range(self.depth))
    self.blocks = make_blocks("blocks", self.depth, self.num_heads, remat=self.remat,
                              scan=self.scan_layers, drop_path=self.drop_rates,
                              mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                              param_dtype=self.param_dtype, attention=self.attention)
    if self.pool == "avg":
      self.fc_norm = layer_norm("fc_norm", param_dtype=self.param_dtype)
    else:
      self.norm = layer_norm("norm", param_dtype=self.param_dtype)
    if self.head_norm:
      self.bn = nn.BatchNorm(use_scale=False, use_bias=False, epsilon=LN_EPS, momentum=0.9,
                             axis_name=None, name="head_norm")
    self.head = dense(self.num_classes, "head", ("embed", "classes"), self.dtype,
                      self.param_dtype,
                      kernel_init=nn.initializers.truncated_normal(self.head_init_std))

  def features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Pooled encoder features ``[B, D]`` (float32): avg + ``fc_norm``, ``norm`` + cls,
    or ``norm`` + mean."""
    shape = self.input_shape
    if images.ndim != len(shape) + 2 or images.shape[1:-1] != shape:
      what = "clips [B, T, H, W, C]" if self.tubelet_size else "images [B, H, W, C]"
      raise ValueError(f"model built for {'x'.join(map(str, shape))} {what}, got shape "
                       f"{images.shape}")
    x = self.patch_embed(images).astype(jnp.float32)
    b = x.shape[0]
    prefix = int(self.use_cls_token)
    if prefix:
      cls = jnp.broadcast_to(self.cls_token.astype(jnp.float32), (b, 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.pos_embed.astype(jnp.float32)
    x = constrain(x, ("batch", "length", "act_embed"))
    x = run_blocks(self.blocks, x, not train, self.depth, self.drop_rates)
    if self.pool == "avg":
      return self.fc_norm(x[:, prefix:].mean(axis=1)).astype(jnp.float32)
    x = self.norm(x)
    if self.pool == "mean":
      return x[:, prefix:].mean(axis=1).astype(jnp.float32)
    return x[:, 0].astype(jnp.float32)

  def logits(self, features: jax.Array, train: bool = False) -> jax.Array:
    """Head on pooled features: ``[B, num_classes]`` float32 logits."""
    if self.head_norm:
      features = self.bn(features, use_running_average=not train)
    return self.head(features).astype(jnp.float32)

  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    return self.logits(self.features(images, train), train)
