"""PyTorch interop: round trips, and numerical parity with the official MAE code,
timm's VisionTransformer and Hugging Face's ViTMAEForPreTraining (CPU, float32)."""
import functools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models.vision_transformer import Block, PatchEmbed  # noqa: E402
from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402
from transformers.models.vit_mae import modeling_vit_mae  # noqa: E402

from mae_jax import config_lib, export  # noqa: E402
from mae_jax.errors import CheckpointError  # noqa: E402
from mae_jax.models import registry  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_default_dtype(torch.float32)

PRED_TOL, LOSS_TOL, FEAT_TOL = 1e-5, 1e-6, 1e-5
# Two tiny architectures: RGB 32x32 (8x8 grid) and grayscale 28x28 (7x7 grid).
ARCHS = {"rgb32": (32, 3), "gray28": (28, 1)}
# Four bands, square (8x8 grid) and rectangular 32x48 (8x12 grid): what timm takes
# (in_chans, img_size=(h, w)) and Hugging Face's ViTMAE (num_channels, square only).
BANDS = {"bands4": (32, 4), "bands4_rect": ((32, 48), 4)}
ALL_ARCHS = {**ARCHS, **BANDS}


def hw(arch):
  size = ALL_ARCHS[arch][0]
  return (size, size) if isinstance(size, int) else size
TINY = dict(patch_size=4, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
            decoder_depth=2, decoder_num_heads=4, mlp_ratio=4.0)


# ----------------------------------------------------- the official MAE in torch


def official_sincos(embed_dim, grid_size):
  """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed (cls row incl.)."""
  def one_d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  grid = np.meshgrid(np.arange(grid_size, dtype=np.float32),
                     np.arange(grid_size, dtype=np.float32))
  grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
  emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], 1)
  return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


class OfficialMAE(torch.nn.Module):
  """facebookresearch/mae models_mae.MaskedAutoencoderViT, transcribed.

  Same modules (timm ``PatchEmbed`` and ``Block``), names and forward passes;
  two changes for testing: ``noise`` can be passed to ``random_masking`` (the
  official code draws ``torch.rand``), and ``patchify`` uses ``in_chans`` where
  the official code hard-codes 3.
  """

  def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24,
               num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
               mlp_ratio=4., norm_layer=torch.nn.LayerNorm, norm_pix_loss=False):
    super().__init__()
    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
    num_patches = self.patch_embed.num_patches
    self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = torch.nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim),
                                        requires_grad=False)
    self.blocks = torch.nn.ModuleList([
        Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
        for _ in range(depth)])
    self.norm = norm_layer(embed_dim)
    self.decoder_embed = torch.nn.Linear(embed_dim, decoder_embed_dim, bias=True)
    self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.decoder_pos_embed = torch.nn.Parameter(
        torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
    self.decoder_blocks = torch.nn.ModuleList([
        Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
              norm_layer=norm_layer)
        for _ in range(decoder_depth)])
    self.decoder_norm = norm_layer(decoder_embed_dim)
    self.decoder_pred = torch.nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
    self.norm_pix_loss = norm_pix_loss
    self.in_chans = in_chans
    self.initialize_weights()

  def initialize_weights(self):
    grid = int(self.patch_embed.num_patches ** .5)
    self.pos_embed.data.copy_(
        torch.from_numpy(official_sincos(self.pos_embed.shape[-1], grid)).float().unsqueeze(0))
    self.decoder_pos_embed.data.copy_(torch.from_numpy(
        official_sincos(self.decoder_pos_embed.shape[-1], grid)).float().unsqueeze(0))
    w = self.patch_embed.proj.weight.data
    torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
    torch.nn.init.normal_(self.cls_token, std=.02)
    torch.nn.init.normal_(self.mask_token, std=.02)
    self.apply(self._init_weights)

  def _init_weights(self, m):
    if isinstance(m, torch.nn.Linear):
      torch.nn.init.xavier_uniform_(m.weight)
      if m.bias is not None:
        torch.nn.init.constant_(m.bias, 0)
    elif isinstance(m, torch.nn.LayerNorm):
      torch.nn.init.constant_(m.bias, 0)
      torch.nn.init.constant_(m.weight, 1.0)

  def patchify(self, imgs):
    p = self.patch_embed.patch_size[0]
    assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
    h = w = imgs.shape[2] // p
    c = self.in_chans
    x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * c))

  def random_masking(self, x, mask_ratio, noise=None):
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
      noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore

  def forward_encoder(self, x, mask_ratio, noise=None):
    x = self.patch_embed(x)
    x = x + self.pos_embed[:, 1:, :]
    x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
    cls_token = self.cls_token + self.pos_embed[:, :1, :]
    cls_tokens = cls_token.expand(x.shape[0], -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    for blk in self.blocks:
      x = blk(x)
    x = self.norm(x)
    return x, mask, ids_restore

  def forward_decoder(self, x, ids_restore):
    x = self.decoder_embed(x)
    mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    x = self.decoder_norm(x)
    x = self.decoder_pred(x)
    return x[:, 1:, :]

  def forward_loss(self, imgs, pred, mask):
    target = self.patchify(imgs)
    if self.norm_pix_loss:
      mean = target.mean(dim=-1, keepdim=True)
      var = target.var(dim=-1, keepdim=True)
      target = (target - mean) / (var + 1.e-6)**.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()

  def forward(self, imgs, mask_ratio=0.75, noise=None):
    latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
    pred = self.forward_decoder(latent, ids_restore)
    loss = self.forward_loss(imgs, pred, mask)
    return loss, pred, mask


def official_model(**kwargs):
  return OfficialMAE(**kwargs, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))


def randomize_torch(module, seed):
  """Non-trivial values for every trainable tensor (no zero biases, no unit norms)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      if p.requires_grad:
        p.add_(0.05 * torch.randn(p.shape, generator=gen))


# --------------------------------------------------------------- shared fixtures


def make_config(arch, norm_pix_loss=True, **dims):
  size, channels = ALL_ARCHS[arch]
  c = config_lib.pretrain_defaults("tiny/4")
  c.model.update(**{**TINY, **dims}, norm_pix_loss=norm_pix_loss)
  c.data.update(channels=channels)
  with c.data.ignore_type():
    c.data.image_size = size
  return c


@functools.lru_cache(maxsize=None)
def random_params(arch):
  """Random values in our tree's shapes: every bias and norm parameter non-trivial."""
  config = make_config(arch)
  model = registry.build_mae(config)
  channels = ALL_ARCHS[arch][1]
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)},
      jnp.zeros((1, *hw(arch), channels))))["params"])
  rng = np.random.default_rng(0)
  paths = jax.tree_util.tree_flatten_with_path(shapes)[0]

  def draw(path, leaf):
    value = 0.05 * rng.standard_normal(leaf.shape).astype(np.float32)
    return value + 1.0 if path[-1].key == "scale" else value
  leaves = [draw(path, leaf) for path, leaf in paths]
  return jax.tree.unflatten(jax.tree.structure(shapes), leaves)


@functools.lru_cache(maxsize=None)
def inputs(arch, batch=3):
  (h, w), channels = hw(arch), ALL_ARCHS[arch][1]
  rng = np.random.default_rng(1)
  images = rng.standard_normal((batch, h, w, channels)).astype(np.float32)
  noise = rng.random((batch, (h // 4) * (w // 4))).astype(np.float32)
  return images, noise


def jax_outputs(config, params, images, noise):
  model = registry.build_mae(config)
  loss, pred, mask = jax.jit(lambda p, x, n: model.apply({"params": p}, x, train=False,
                                                         noise=n))(params, images, noise)
  return float(loss), np.asarray(pred), np.asarray(mask)


@functools.lru_cache(maxsize=None)
def reference_outputs(arch, norm_pix_loss):
  """Our model on the random params (shared by the HF and official parity tests)."""
  images, noise = inputs(arch)
  return jax_outputs(make_config(arch, norm_pix_loss), random_params(arch), images, noise)


def jax_features(config, params, images):
  model = registry.build_mae(config)
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method="features"))(
      params, images))


def nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def assert_parity(what, torch_out, jax_out):
  loss_t, pred_t, mask_t = (float(torch_out[0]), torch_out[1].detach().numpy(),
                            torch_out[2].detach().numpy())
  loss_j, pred_j, mask_j = jax_out
  np.testing.assert_array_equal(mask_t, mask_j)
  pred_diff, loss_diff = float(np.abs(pred_t - pred_j).max()), abs(loss_t - loss_j)
  print(f"{what}: max |pred diff| {pred_diff:.3g}, |loss diff| {loss_diff:.3g}")
  assert pred_diff <= PRED_TOL, (what, pred_diff)
  assert loss_diff <= LOSS_TOL, (what, loss_diff)


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
  return out


def assert_same_params(a, b, only=None):
  fa, fb = flat(a), flat(b)
  if only:
    fa = {k: v for k, v in fa.items() if only(k)}
    fb = {k: v for k, v in fb.items() if only(k)}
  assert fa.keys() == fb.keys(), sorted(set(fa) ^ set(fb))
  for k in fa:
    assert fa[k].dtype == fb[k].dtype == np.float32, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def is_encoder(path):
  return not path.startswith(("decoder", "mask_token"))


# -------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt,out", [("official", "mae.pth"), ("hf", "hf_dir"),
                                     ("timm", "vit.pth"), ("official", "mae.safetensors")])
def test_round_trip_through_files_is_bit_exact(tmp_path, fmt, out):
  config = make_config("rgb32", norm_pix_loss=False)
  config.model.mask_ratio = 0.6
  params = random_params("rgb32")
  written = export.save(params, config, fmt, str(tmp_path / out))
  assert all(os.path.exists(p) for p in written)
  # timm files carry no decoder; with the config given, the fresh one is this tiny one
  imported = export.import_file(str(tmp_path / out), fmt,
                                config=config if fmt == "timm" else None)
  m = imported.config.model
  for key in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio"):
    assert m[key] == config.model[key], key
  assert imported.config.data.image_size == 32 and imported.config.data.channels == 3
  if fmt == "timm":  # encoder only: the decoder is fresh
    assert not imported.has_decoder
    assert_same_params(params, imported.params, only=is_encoder)
    assert not np.array_equal(params["mask_token"], imported.params["mask_token"])
    return
  assert imported.has_decoder
  for key in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "norm_pix_loss"):
    assert m[key] == config.model[key], key
  if fmt == "hf":
    assert m.mask_ratio == 0.6
  assert_same_params(params, imported.params)


def test_in_memory_round_trip_and_transforms():
  config = make_config("gray28")
  params = random_params("gray28")
  sd = export.to_torch_state_dict(params, config, "official")
  assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in sd.values())
  d, p = 64, 4
  assert sd["blocks.0.attn.qkv.weight"].shape == (3 * d, d)
  assert sd["patch_embed.proj.weight"].shape == (d, 1, p, p)
  # qkv output order is (3, heads, head_dim): rows [d:2d] are the keys of all heads
  kernel = params["blocks_0"]["attn"]["qkv"]["kernel"]  # [D, 3, H, hd]
  np.testing.assert_array_equal(sd["blocks.0.attn.qkv.weight"][d + 16:d + 32],
                                kernel[:, 1, 1, :].T)
  np.testing.assert_array_equal(sd["patch_embed.proj.weight"][5, 0, 1, 2],
                                params["patch_embed"]["proj"]["kernel"][1, 2, 0, 5])
  back = export.from_torch_state_dict(sd, "official",
                                      metadata=export.torch_metadata(config, "official"))
  assert_same_params(params, back.params)
  # torch tensors and the {"model": ...} wrapper are accepted as well
  wrapped = {"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}
  assert_same_params(params, export.from_torch_state_dict(
      wrapped, "official", metadata=export.torch_metadata(config, "official")).params)


# ------------------------------------------------------------------------ parity


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("arch", list(ARCHS) + ["bands4"])
def test_hf_parity(tmp_path, arch, norm_pix_loss):
  config = make_config(arch, norm_pix_loss)
  params = random_params(arch)
  images, noise = inputs(arch)
  export.save(params, config, "hf", str(tmp_path / "hf"))
  meta = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert meta["layer_norm_eps"] == 1e-6 and meta["hidden_act"] == "gelu" and meta["qkv_bias"]
  assert meta["norm_pix_loss"] is norm_pix_loss and meta["mask_ratio"] == 0.75
  assert meta["num_channels"] == ALL_ARCHS[arch][1]
  model, info = ViTMAEForPreTraining.from_pretrained(str(tmp_path / "hf"),
                                                     output_loading_info=True)
  assert not any(info.values()), info
  assert model.config.layer_norm_eps == 1e-6
  model.eval()
  with torch.no_grad():
    out = model(pixel_values=nchw(images), noise=torch.from_numpy(noise))
  assert_parity(f"hf {arch} norm_pix_loss={norm_pix_loss}", (out.loss, out.logits, out.mask),
                reference_outputs(arch, norm_pix_loss))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_official_parity(tmp_path, arch, norm_pix_loss):
  config = make_config(arch, norm_pix_loss)
  params = random_params(arch)
  images, noise = inputs(arch)
  export.save(params, config, "official", str(tmp_path / "mae.pth"))
  kwargs = json.loads((tmp_path / "mae.json").read_text())
  assert set(kwargs) == {"img_size", "patch_size", "in_chans", "embed_dim", "depth",
                         "num_heads", "decoder_embed_dim", "decoder_depth",
                         "decoder_num_heads", "mlp_ratio", "norm_pix_loss"}
  model = official_model(**kwargs)
  checkpoint = torch.load(tmp_path / "mae.pth", weights_only=True)
  assert set(checkpoint) == {"model"}
  model.load_state_dict(checkpoint["model"], strict=True)
  model.eval()
  with torch.no_grad():
    out = model(nchw(images), mask_ratio=0.75, noise=torch.from_numpy(noise))
  assert_parity(f"official {arch} norm_pix_loss={norm_pix_loss}", out,
                reference_outputs(arch, norm_pix_loss))


@pytest.mark.parametrize("arch", list(ALL_ARCHS))
def test_timm_parity(tmp_path, arch):
  config = make_config(arch)
  params = random_params(arch)
  images, _ = inputs(arch)
  export.save(params, config, "timm", str(tmp_path / "vit.pth"))
  meta = json.loads((tmp_path / "vit.json").read_text())
  assert timm.is_model(meta["model_name"])
  assert meta["kwargs"]["num_classes"] == 0
  model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"])
  model.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=True)
  model.eval()
  with torch.no_grad():
    feats = model.forward_features(nchw(images)).numpy()
  ours = jax_features(config, params, images)
  diff = float(np.abs(feats - ours).max())
  print(f"timm {arch}: max |features diff| {diff:.3g}")
  (h, w), channels = hw(arch), ALL_ARCHS[arch][1]
  assert feats.shape == ours.shape == (3, 1 + (h // 4) * (w // 4), 64)
  assert tuple(model.patch_embed.img_size) == (h, w) and model.patch_embed.proj.in_channels == \
      channels
  assert meta["pretrained_cfg"]["input_size"] == [channels, h, w]
  assert diff <= FEAT_TOL


def test_rectangular_bands_round_trip_through_timm_and_refuse_official_and_hf(tmp_path):
  """A 4-band 32x48 MAE: its encoder goes to timm and back bit-exactly; the official
  code (one img_size) and Hugging Face's ViTMAE (square grids) refuse it in one line."""
  config = make_config("bands4_rect", norm_pix_loss=False)
  params = random_params("bands4_rect")
  export.save(params, config, "timm", str(tmp_path / "vit.pth"))
  back = export.import_file(str(tmp_path / "vit.pth"), "timm", config=config)
  assert_same_params(params, back.params, only=is_encoder)
  # without a config the (height, width) comes from the metadata timm reads
  back = export.import_file(str(tmp_path / "vit.pth"), "timm")
  assert tuple(back.config.data.image_size) == (32, 48) and back.config.data.channels == 4
  assert_same_params(params, back.params, only=is_encoder)
  for fmt, out in (("official", "mae.pth"), ("hf", "hf")):
    with pytest.raises(CheckpointError, match=rf"cannot export to --format={fmt}: "
                       r"data.image_size=\(32, 48\) is not square.*use --format=timm"):
      export.save(params, config, fmt, str(tmp_path / out))
    assert not (tmp_path / out).exists()


def test_exported_tables_match_hf_sincos():
  """Hugging Face builds its tables independently ([sin_h|cos_h|sin_w|cos_w], halves
  swapped to the official layout); ours must equal them."""
  config = make_config("rgb32")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "hf")
  for key, dim in (("vit.embeddings.position_embeddings", 64),
                   ("decoder.decoder_pos_embed", 32)):
    table = modeling_vit_mae.build_2d_sinusoidal_position_embedding(8, 8, dim, cls_token=True)
    table = torch.cat([table[..., dim // 2:], table[..., :dim // 2]], dim=-1).numpy()
    np.testing.assert_allclose(sd[key][0], table, atol=1e-6, err_msg=key)


# ------------------------------------------------- import of PyTorch-side models

# Heads are not visible in tensor shapes; these widths use the released defaults
# (64 per encoder head, 32 per decoder head), as a file without a JSON would.
RELEASED = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=128, depth=2, num_heads=2,
                decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0)


@functools.lru_cache(maxsize=None)
def released_model(norm_pix_loss):
  torch.manual_seed(0)
  model = official_model(**RELEASED, norm_pix_loss=norm_pix_loss)
  randomize_torch(model, seed=1)
  return model.eval()


def test_import_official_full_checkpoint(tmp_path):
  """A ``*_full.pth``-style file, no JSON: architecture from the shapes."""
  torch_model = released_model(True)
  path = tmp_path / "mae_pretrain_vit_tiny_full.pth"
  torch.save({"model": torch_model.state_dict()}, path)
  imported = export.import_file(str(path), "official")
  m = imported.config.model
  assert imported.has_decoder
  assert (m.embed_dim, m.depth, m.num_heads, m.decoder_embed_dim, m.decoder_depth,
          m.decoder_num_heads) == (128, 2, 2, 64, 1, 2)
  assert any("num_heads is not stored" in n for n in imported.notices)
  images, noise = inputs("rgb32")
  with torch.no_grad():
    out = torch_model(nchw(images), mask_ratio=0.75, noise=torch.from_numpy(noise))
  assert_parity("import official full", out,
                jax_outputs(imported.config, imported.params, images, noise))


def test_import_official_encoder_only_checkpoint(tmp_path, caplog):
  """``mae_pretrain_vit_*.pth``: encoder keys only; the decoder is initialised fresh."""
  torch_model = released_model(True)
  encoder = {k: v for k, v in torch_model.state_dict().items()
             if not k.startswith(("decoder", "mask_token"))}
  path = tmp_path / "mae_pretrain_vit_tiny.pth"
  torch.save({"model": encoder}, path)
  # (a small decoder to keep the test fast; the default is the official 512x8)
  small_decoder = dict(decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)
  with caplog.at_level("INFO"):
    imported = export.import_file(str(path), "official", metadata=small_decoder)
  assert not imported.has_decoder
  assert "no decoder" in caplog.text and "freshly initialised" in caplog.text
  assert "num_heads is not stored in the weights; assuming 2" in caplog.text
  assert imported.config.model.decoder_embed_dim == 64
  images, _ = inputs("rgb32")
  length = (32 // 4) ** 2
  in_order = torch.arange(length, dtype=torch.float32).expand(images.shape[0], length)
  with torch.no_grad():
    feats = torch_model.forward_encoder(nchw(images), 0.0, noise=in_order)[0].numpy()
  diff = float(np.abs(feats - jax_features(imported.config, imported.params, images)).max())
  print(f"import official encoder-only: max |features diff| {diff:.3g}")
  assert diff <= FEAT_TOL


def test_import_official_training_checkpoint_with_args(tmp_path):
  """The official ``checkpoint-N.pth`` also holds ``args`` (an argparse.Namespace)."""
  import argparse
  torch_model = released_model(False)
  path = tmp_path / "checkpoint-799.pth"
  torch.save({"model": torch_model.state_dict(), "epoch": 799,
              "args": argparse.Namespace(model="mae_vit_tiny", norm_pix_loss=False)}, path)
  with open(tmp_path / "checkpoint-799.json", "w") as f:
    json.dump({**RELEASED, "norm_pix_loss": False}, f)
  imported = export.import_file(str(path), "official")
  assert imported.config.model.norm_pix_loss is False
  assert not any("not stored" in n for n in imported.notices)
  assert any("ignoring" in n and "args" in n for n in imported.notices)


def test_import_hf_model_saved_by_transformers(tmp_path):
  """A ViTMAEForPreTraining made and saved by transformers (its own key spelling)."""
  hf_config = ViTMAEConfig(
      image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=256, decoder_hidden_size=32,
      decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
      decoder_intermediate_size=128, layer_norm_eps=1e-6, norm_pix_loss=True, mask_ratio=0.75)
  torch.manual_seed(0)
  model = ViTMAEForPreTraining(hf_config)
  randomize_torch(model, seed=2)
  with torch.no_grad():  # this transformers version leaves fresh tables at zero
    for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
      table.copy_(torch.from_numpy(official_sincos(table.shape[-1], 7)).float()[None])
  model.save_pretrained(str(tmp_path / "hf"))
  imported = export.import_file(str(tmp_path / "hf"), "hf")
  assert imported.config.model.num_heads == 4 and imported.config.model.norm_pix_loss
  images, noise = inputs("gray28")
  model.eval()
  with torch.no_grad():
    out = model(pixel_values=nchw(images), noise=torch.from_numpy(noise))
  assert_parity("import hf save_pretrained", (out.loss, out.logits, out.mask),
                jax_outputs(imported.config, imported.params, images, noise))
  # the in-memory state dict (module names of transformers >= 5) works too
  again = export.from_torch_state_dict(model.state_dict(), "hf", metadata=hf_config.to_dict())
  assert_same_params(imported.params, again.params)


def test_learned_position_table_is_reported(caplog):
  config = make_config("rgb32")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "official")
  sd["pos_embed"] = sd["pos_embed"] + 0.01
  with caplog.at_level("WARNING"):
    imported = export.from_torch_state_dict(
        sd, "official", metadata=export.torch_metadata(config, "official"))
  assert "pos_embed differs from the fixed 2-D sin-cos table" in caplog.text
  assert_same_params(random_params("rgb32"), imported.params)


def test_import_at_another_image_size():
  config = make_config("rgb32")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "official")
  imported = export.from_torch_state_dict(
      sd, "official", metadata=export.torch_metadata(config, "official"), image_size=48)
  assert imported.config.data.image_size == 48
  assert any("8x8 patch grid" in n and "12x12" in n for n in imported.notices)
  assert_same_params(random_params("rgb32"), imported.params)
  back = export.to_torch_state_dict(imported.params, imported.config, "official")
  assert back["pos_embed"].shape == (1, 1 + 144, 64)


# ------------------------------------------------------------------- bad inputs


class _Payload:
  """Unpickling this creates ``path``: proof that code ran."""
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_pickled_callable_is_refused(tmp_path):
  sd = export.to_torch_state_dict(random_params("rgb32"), make_config("rgb32"), "official")
  marker = tmp_path / "code_ran"
  path = tmp_path / "evil.pth"
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()},
              "extra": _Payload(str(marker))}, path)
  with pytest.raises(CheckpointError, match=r"pickled Python object \((io|builtins)\.open\)"):
    export.import_file(str(path), "official")
  assert not marker.exists()


def test_unreadable_file(tmp_path):
  path = tmp_path / "broken.pth"
  path.write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointError, match="cannot be read"):
    export.import_file(str(path), "official")


def test_missing_and_unexpected_keys_are_listed():
  config = make_config("rgb32")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "official")
  del sd["blocks.1.attn.proj.weight"], sd["decoder_norm.bias"]
  sd["blocks.1.attn.extra.weight"] = np.zeros((2,), np.float32)
  sd["head.weight"] = np.zeros((10, 64), np.float32)
  with pytest.raises(CheckpointError) as e:
    export.from_torch_state_dict(sd, "official",
                                 metadata=export.torch_metadata(config, "official"))
  text = str(e.value)
  assert "missing keys: blocks.1.attn.proj.weight, decoder_norm.bias" in text
  assert "unexpected keys: blocks.1.attn.extra.weight, head.weight" in text


def test_mismatched_shapes_name_the_parameter():
  config = make_config("rgb32")
  meta = export.torch_metadata(config, "official")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "official")
  sd["blocks.1.mlp.fc2.weight"] = np.zeros((64, 128), np.float32)
  with pytest.raises(CheckpointError,
                     match=r"blocks\.1\.mlp\.fc2\.weight has shape \(64, 128\), the model "
                           r"expects \(64, 256\)"):
    export.from_torch_state_dict(sd, "official", metadata=meta)
  # against a given config: the RGB weights do not fit a grayscale model
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "official")
  with pytest.raises(CheckpointError) as e:
    export.from_torch_state_dict(sd, "official", config=make_config("gray28"))
  assert "patch_embed.proj.weight has shape (64, 3, 4, 4), the model expects (64, 1, 4, 4)" \
      in str(e.value)
  assert "decoder_pred.weight" in str(e.value)


def test_wrong_format_is_pointed_out():
  config = make_config("rgb32")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "hf")
  with pytest.raises(CheckpointError, match="--format=hf"):
    export.from_torch_state_dict(sd, "official")
  sd = export.to_torch_state_dict(random_params("rgb32"), config, "official")
  with pytest.raises(CheckpointError, match="unexpected keys: decoder_blocks.0"):
    export.from_torch_state_dict(sd, "timm", metadata=export.torch_metadata(config, "timm"))


def test_params_must_match_the_config():
  with pytest.raises(CheckpointError,
                     match=r"patch_embed/proj/kernel \(4, 4, 3, 64\) \(config: \(4, 4, 1, 64\)\)"):
    export.to_torch_state_dict(random_params("rgb32"), make_config("gray28"), "official")
