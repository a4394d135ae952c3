"""The official MAE pretraining model's structure (facebookresearch/mae ``models_mae.py``,
``MaskedAutoencoderViT``), written compactly on timm's ``Block`` and ``PatchEmbed``: the
PyTorch peer the speed benchmarks time, eager and under ``torch.compile``.

The same modules, parameters, order and operations as the official code: patch
embedding, fixed 2-D sin-cos position tables (buffers of the parameter shape, not
trained), per-sample random masking by ``argsort`` of ``torch.rand`` noise and
``gather``, cls token, timm blocks with qkv bias and LayerNorm eps 1e-6, decoder with a
mask token unshuffled by ``ids_restore``, pixel head, (norm-pix) MSE on the removed
patches. Initialisation as the official one (xavier-uniform linears and patch kernel,
normal(0.02) tokens). timm's attention uses ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from timm.models.vision_transformer import Block, PatchEmbed


def sincos_table(dim: int, grid: int, cls_token: bool) -> torch.Tensor:
  from mae_jax.models.pos_embed import sincos_2d   # the official layout (NumPy)
  return torch.from_numpy(sincos_2d(dim, grid, cls_token)).unsqueeze(0)


class MaskedAutoencoderViT(nn.Module):

  def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24,
               num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
               mlp_ratio=4.0, norm_pix_loss=False):
    super().__init__()
    norm_layer = functools.partial(nn.LayerNorm, eps=1e-6)
    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
    num_patches = self.patch_embed.num_patches
    grid = int(num_patches ** 0.5)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(sincos_table(embed_dim, grid, True), requires_grad=False)
    self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True,
                                       norm_layer=norm_layer) for _ in range(depth)])
    self.norm = norm_layer(embed_dim)
    self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.decoder_pos_embed = nn.Parameter(sincos_table(decoder_embed_dim, grid, True),
                                          requires_grad=False)
    self.decoder_blocks = nn.ModuleList([
        Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
              norm_layer=norm_layer) for _ in range(decoder_depth)])
    self.decoder_norm = norm_layer(decoder_embed_dim)
    self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans, bias=True)
    self.norm_pix_loss = norm_pix_loss
    self.patch_size = patch_size
    w = self.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
    nn.init.normal_(self.cls_token, std=0.02)
    nn.init.normal_(self.mask_token, std=0.02)
    self.apply(self._init_weights)

  @staticmethod
  def _init_weights(m):
    if isinstance(m, nn.Linear):
      nn.init.xavier_uniform_(m.weight)
      if m.bias is not None:
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
      nn.init.constant_(m.bias, 0)
      nn.init.constant_(m.weight, 1.0)

  def patchify(self, imgs):
    p = self.patch_size
    h = w = imgs.shape[2] // p
    x = imgs.reshape(imgs.shape[0], imgs.shape[1], h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p * p * imgs.shape[1])

  def random_masking(self, x, mask_ratio):
    n, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x_masked = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length], device=x.device)
    mask[:, :keep] = 0
    return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

  def forward_encoder(self, x, mask_ratio):
    x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
    x, mask, ids_restore = self.random_masking(x, mask_ratio)
    cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat((cls, x), dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x), mask, ids_restore

  def forward_decoder(self, x, ids_restore):
    x = self.decoder_embed(x)
    mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

  def forward_loss(self, imgs, pred, mask):
    target = self.patchify(imgs)
    if self.norm_pix_loss:
      mean = target.mean(dim=-1, keepdim=True)
      var = target.var(dim=-1, keepdim=True)
      target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()

  def forward(self, imgs, mask_ratio=0.75):
    latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
    pred = self.forward_decoder(latent, ids_restore)
    return self.forward_loss(imgs, pred, mask), pred, mask
