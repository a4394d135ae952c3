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
"""
from __future__ import annotations


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
  """Forward FLOPs of one pre-norm transformer block."""
  mlp = mlp_ratio * width
  matmuls = 2 * tokens * width * (3 * width + width + 2 * mlp)
  attention = 4 * tokens * tokens * width
  return matmuls + attention


def mae_forward_flops(*, image_size: int, patch_size: int, channels: int, embed_dim: int,
                      depth: int, decoder_embed_dim: int, decoder_depth: int,
                      mlp_ratio: float = 4.0, mask_ratio: float = 0.75, **_) -> float:
  """Forward FLOPs per image of ``MaskedAutoencoder`` (extra keys are ignored)."""
  patches = (image_size // patch_size) ** 2
  visible = int(patches * (1 - mask_ratio))
  patch_dim = patch_size * patch_size * channels
  flops = 2 * patches * patch_dim * embed_dim                      # patch embedding
  flops += depth * block_flops(1 + visible, embed_dim, mlp_ratio)  # encoder
  flops += 2 * (1 + visible) * embed_dim * decoder_embed_dim      # decoder embedding
  flops += decoder_depth * block_flops(1 + patches, decoder_embed_dim, mlp_ratio)
  flops += 2 * (1 + patches) * decoder_embed_dim * patch_dim       # pixel head
  return float(flops)


def mae_train_flops(**dims) -> float:
  """Forward + backward FLOPs per image (backward = 2x forward)."""
  return 3.0 * mae_forward_flops(**dims)


def variant_train_flops(variant: str, image_size: int = 224, channels: int = 3,
                        mask_ratio: float = 0.75) -> float:
  """``mae_train_flops`` for a named variant of ``mae_jax.models.registry``."""
  from mae_jax.models import registry
  dims = registry.variant_dims(variant)
  return mae_train_flops(image_size=image_size, channels=channels, mask_ratio=mask_ratio,
                         **dims)


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
