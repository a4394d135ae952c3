"""patchify/unpatchify, sin-cos tables and random masking against NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax.errors import ConfigError
from mae_jax.models import masking, pos_embed


def numpy_patchify_nchw(imgs, p):
  """Transcription of the official ``patchify`` (NCHW, einsum nchpwq->nhwpqc)."""
  n, c, h, w = imgs.shape
  gh, gw = h // p, w // p
  x = imgs.reshape(n, c, gh, p, gw, p)
  x = np.einsum("nchpwq->nhwpqc", x)
  return x.reshape(n, gh * gw, p * p * c)


@pytest.mark.parametrize("shape,p", [((2, 8, 8, 3), 4), ((3, 28, 28, 1), 7), ((1, 12, 8, 2), 4)])
def test_patchify_matches_official_pixel_order(shape, p):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  ours = np.asarray(masking.patchify(jnp.asarray(x), p))
  ref = numpy_patchify_nchw(x.transpose(0, 3, 1, 2), p)
  np.testing.assert_array_equal(ours, ref)
  grid = (shape[1] // p, shape[2] // p)
  back = np.asarray(masking.unpatchify(jnp.asarray(ours), p, grid, shape[3]))
  np.testing.assert_array_equal(back, x)


def test_patch_pixel_order_is_row_col_channel():
  x = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)  # one 2x2 patch
  np.testing.assert_array_equal(np.asarray(masking.patchify(jnp.asarray(x), 2))[0, 0],
                                x[0].reshape(-1))


def test_image_not_divisible_by_patch_is_a_clear_error():
  with pytest.raises(ConfigError, match="not divisible by patch_size 5"):
    masking.patchify(jnp.zeros((1, 28, 28, 1)), 5)


def official_sincos(embed_dim, grid_size, cls_token=False):
  """NumPy transcription of the official MAE util/pos_embed.py."""
  def one_d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.meshgrid(grid_w, grid_h)
  grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
  emb_h = one_d(embed_dim // 2, grid[0])
  emb_w = one_d(embed_dim // 2, grid[1])
  emb = np.concatenate([emb_h, emb_w], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
  return emb


@pytest.mark.parametrize("dim,grid", [(64, 7), (768, 14), (32, 4)])
def test_sincos_table_matches_official(dim, grid):
  ours = pos_embed.sincos_2d(dim, grid, cls_token=True)
  ref = official_sincos(dim, grid, cls_token=True).astype(np.float32)
  assert ours.shape == (1 + grid * grid, dim)
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  np.testing.assert_array_equal(ours[0], 0)
  # first half from the w (column) coordinate: patch (0, 1) differs from (0, 0) there
  assert not np.allclose(ours[2, : dim // 2], ours[1, : dim // 2])
  np.testing.assert_allclose(ours[2, dim // 2:], ours[1, dim // 2:])


def test_random_masking_properties():
  b, length, d = 4, 49, 8
  x = jnp.asarray(np.random.default_rng(0).normal(size=(b, length, d)), jnp.float32)
  kept, mask, ids_restore = masking.random_masking(x, 0.75, rng=jax.random.key(0))
  keep = int(length * (1 - 0.75))
  assert kept.shape == (b, keep, d)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), length - keep)
  assert len({tuple(np.asarray(m)) for m in mask}) == b  # different per sample
  # kept tokens are exactly the unmasked ones
  for i in range(b):
    visible = np.where(np.asarray(mask[i]) == 0)[0]
    got = {tuple(np.round(r, 6)) for r in np.asarray(kept[i])}
    want = {tuple(np.round(r, 6)) for r in np.asarray(x[i, visible])}
    assert got == want
  # ids_restore inverts the shuffle
  restore = np.asarray(ids_restore)
  for i in range(b):
    shuffle = np.argsort(restore[i])
    np.testing.assert_array_equal(shuffle[restore[i]], np.arange(length))


def test_noise_reproduces_argsort_ranking():
  rng = np.random.default_rng(1)
  b, length = 3, 16
  noise = rng.random((b, length)).astype(np.float32)
  x = jnp.asarray(np.tile(np.arange(length, dtype=np.float32)[None, :, None], (b, 1, 1)))
  kept, mask, ids_restore = masking.random_masking(x, 0.75, noise=jnp.asarray(noise))
  keep = int(length * 0.25)
  ids_shuffle = np.argsort(noise, axis=1)
  np.testing.assert_array_equal(np.asarray(kept)[..., 0], ids_shuffle[:, :keep])
  ref_mask = np.ones((b, length))
  ref_mask[:, :keep] = 0
  ref_mask = np.take_along_axis(ref_mask, np.argsort(ids_shuffle, 1), axis=1)
  np.testing.assert_array_equal(np.asarray(mask), ref_mask)
  np.testing.assert_array_equal(np.asarray(ids_restore), np.argsort(ids_shuffle, 1))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, 0.99])
def test_bad_mask_ratio(ratio):
  with pytest.raises(ConfigError, match="mask_ratio"):
    masking.random_masking(jnp.zeros((1, 16, 4)), ratio, rng=jax.random.key(0))
