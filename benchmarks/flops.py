"""Model FLOPs of one MAE pretraining step per image, counted analytically.

Counted: every matrix multiply (2 FLOPs per multiply-add) of the forward pass —
patch embedding on all ``L`` patches, the encoder on ``1 + K`` tokens (cls plus
``K = int(L * (1 - mask_ratio))`` visible patches), the decoder embedding, the
decoder on ``1 + L`` tokens and the pixel head — and the backward pass as twice
the forward (the usual 3x "model FLOPs" convention of MFU). Per transformer
block on ``n`` tokens of width ``d`` with MLP width ``r d``:
``2 n d (3d + d + 2 r d)`` for qkv, proj, fc1, fc2 and ``4 n^2 d`` for QK^T and
AV. Norms, softmax, GELU, masking gathers and the loss are left out (they are
memory-bound and a fraction of a percent).

With the official sizes at 224x224 this gives ViT-B/16 58.7 and ViT-L/16 124.5
GFLOP per image, the numbers the design document uses.

Clips (``tubelet_size = t > 0``, ``num_frames = T``) are counted the same way with
``L = (T/t) (H/p) (W/p)`` spacetime patches, a patch embedding with ``t p p C``
inputs, a pixel head with as many outputs, and no cls token where the model has
none (``use_cls_token=False``: MAE-ST and VideoMAE). ``masking="tube"`` keeps
``(T/t) (S - int(ratio S))`` patches of the ``S = (H/p) (W/p)`` per frame, as
``mae_jax.models.masking.tube_visible``; random masking keeps ``int(L (1 - ratio))``.
The decoder runs on all ``L`` tokens: at 16x224x224 with 2x16x16 tubelets that is
1,568 tokens, where the attention's ``4 n^2 d`` term is a third of a 512-wide decoder block.
``tests/test_benchmarks.py`` checks the count against the matrix multiplies of the
model's own jaxpr.
"""
from __future__ import annotations


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
  """Forward FLOPs of one pre-norm transformer block."""
  mlp = mlp_ratio * width
  matmuls = 2 * tokens * width * (3 * width + width + 2 * mlp)
  attention = 4 * tokens * tokens * width
  return matmuls + attention


def num_tokens(image_size: int, patch_size: int, num_frames: int = 0,
               tubelet_size: int = 0) -> int:
  """Patches of one image, or spacetime patches of one clip (``tubelet_size > 0``)."""
  spatial = (image_size // patch_size) ** 2
  return spatial * (num_frames // tubelet_size) if tubelet_size else spatial


def visible_tokens(image_size: int, patch_size: int, mask_ratio: float, num_frames: int = 0,
                   tubelet_size: int = 0, masking: str = "random") -> int:
  """Patches the encoder sees: tube masking keeps whole tubes, the rest ``int(L(1-r))``."""
  if masking == "tube":
    spatial = (image_size // patch_size) ** 2
    return (num_frames // tubelet_size) * (spatial - int(mask_ratio * spatial))
  return int(num_tokens(image_size, patch_size, num_frames, tubelet_size) * (1 - mask_ratio))


def mae_forward_flops(*, image_size: int, patch_size: int, channels: int, embed_dim: int,
                      depth: int, decoder_embed_dim: int, decoder_depth: int,
                      mlp_ratio: float = 4.0, mask_ratio: float = 0.75, num_frames: int = 0,
                      tubelet_size: int = 0, use_cls_token: bool = True,
                      masking: str = "random", **_) -> float:
  """Forward FLOPs per image (per clip with ``tubelet_size > 0``) of
  ``MaskedAutoencoder`` (extra keys are ignored)."""
  patches = num_tokens(image_size, patch_size, num_frames, tubelet_size)
  visible = visible_tokens(image_size, patch_size, mask_ratio, num_frames, tubelet_size,
                           masking)
  cls = 1 if use_cls_token else 0
  patch_dim = max(tubelet_size, 1) * patch_size * patch_size * channels
  flops = 2 * patches * patch_dim * embed_dim                        # patch embedding
  flops += depth * block_flops(cls + visible, embed_dim, mlp_ratio)  # encoder
  flops += 2 * (cls + visible) * embed_dim * decoder_embed_dim      # decoder embedding
  flops += decoder_depth * block_flops(cls + patches, decoder_embed_dim, mlp_ratio)
  flops += 2 * (cls + patches) * decoder_embed_dim * patch_dim       # pixel head
  return float(flops)


def mae_train_flops(**dims) -> float:
  """Forward + backward FLOPs per image or clip (backward = 2x forward)."""
  return 3.0 * mae_forward_flops(**dims)


def variant_train_flops(variant: str, image_size: int = 224, channels: int = 3,
                        mask_ratio: float = 0.75, **video) -> float:
  """``mae_train_flops`` for a named variant of ``mae_jax.models.registry``; ``video``:
  ``num_frames``, ``tubelet_size``, ``use_cls_token``, ``masking`` for clips."""
  from mae_jax.models import registry
  dims = registry.variant_dims(variant)
  return mae_train_flops(image_size=image_size, channels=channels, mask_ratio=mask_ratio,
                         **dims, **video)


# Dense bf16 peak FLOP/s per chip from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = (
    # (substring of jax's device_kind / torch's device name, peak)
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak of a device, or None when unknown (the CPU included)."""
  for name, peak in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None
