"""patchify/unpatchify, sin-cos tables and the masking strategies against NumPy references."""
import json
import os

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


# --------------------------------------------------------------- strategies


IMAGE_STRATEGIES = ("random",) + masking.IMAGE_STRATEGIES


def previous_random_masking(x, mask_ratio, rng):
  """The random masking as it was before ``model.masking`` existed, transcribed."""
  b, length, _ = x.shape
  keep = int(length * (1 - mask_ratio))
  noise = jax.random.uniform(rng, (b, length))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  x_visible = jnp.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
  return x_visible, (ids_restore >= keep).astype(jnp.float32), ids_restore


@pytest.mark.parametrize("ratio,grid", [(0.75, (7, 7)), (0.9, (14, 14))])
def test_random_strategy_is_bit_for_bit_the_previous_masking(ratio, grid):
  length = grid[0] * grid[1]
  x = jnp.asarray(np.random.default_rng(4).normal(size=(5, length, 6)), jnp.float32)
  key = jax.random.key(11)
  want = previous_random_masking(x, ratio, key)
  for got in (masking.random_masking(x, ratio, rng=key),
              masking.random_masking(x, ratio, rng=key, strategy="random", grid=grid),
              jax.jit(lambda x, k: masking.random_masking(x, ratio, rng=k, grid=grid))(
                  x, key)):
    for a, b in zip(got, want):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


STRATEGY_CASES = [("random", 0.25, (7, 7)), ("random", 0.9, (7, 7)), ("random", 0.6, (6, 8)),
                  ("block", 0.25, (7, 7)), ("block", 0.75, (7, 7)), ("block", 0.9, (7, 7)),
                  ("block", 0.75, (4, 4)), ("block", 0.6, (6, 8)), ("block", 0.75, (14, 14)),
                  ("grid", 0.75, (4, 4)), ("grid", 0.75, (6, 8))]


@pytest.mark.parametrize("strategy,ratio,grid", STRATEGY_CASES)
def test_visible_count_is_exact(strategy, ratio, grid):
  b, length, d = 6, grid[0] * grid[1], 3
  x = jnp.asarray(np.random.default_rng(5).normal(size=(b, length, d)), jnp.float32)
  kept, mask, ids_restore = masking.random_masking(x, ratio, rng=jax.random.key(2),
                                                strategy=strategy, grid=grid)
  keep = int(length * (1 - ratio))
  assert kept.shape == (b, keep, d)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), length - keep)
  restore = np.asarray(ids_restore)
  for i in range(b):
    np.testing.assert_array_equal(np.sort(restore[i]), np.arange(length))
    shuffle = np.argsort(restore[i])
    np.testing.assert_array_equal(np.asarray(kept[i]), np.asarray(x[i])[shuffle[:keep]])
    np.testing.assert_array_equal(np.asarray(mask[i]) == 0, np.isin(np.arange(length),
                                                                      shuffle[:keep]))


@pytest.mark.parametrize("strategy,grid", [("random", (7, 7)), ("block", (7, 7)),
                                           ("grid", (4, 4))])
def test_masks_are_per_sample_and_deterministic_for_a_key(strategy, grid):
  b = 64
  draw = jax.jit(lambda k: masking.sample_noise(k, strategy, b, grid, 0.75))
  noise = np.asarray(draw(jax.random.key(3)))
  np.testing.assert_array_equal(noise, np.asarray(draw(jax.random.key(3))))
  assert not np.array_equal(noise, np.asarray(draw(jax.random.key(4))))
  keep = int(grid[0] * grid[1] * 0.25)
  visible = np.zeros(noise.shape, bool)
  np.put_along_axis(visible, np.argsort(noise, 1)[:, :keep], True, 1)
  patterns = {tuple(v) for v in visible}
  # grid masks have four patterns, random ones all differ; large blocks on a 7x7 grid
  # can coincide now and then
  assert len(patterns) == 4 if strategy == "grid" else len(patterns) >= b - (
      4 if strategy == "block" else 0)
  # the ranking of the visible patches differs per sample too
  assert len({tuple(np.argsort(n)) for n in noise}) == b


@pytest.mark.parametrize("grid", [(4, 4), (6, 8)])
def test_grid_keeps_exactly_one_patch_of_every_2x2(grid):
  gh, gw = grid
  x = jnp.zeros((32, gh * gw, 1))
  _, mask, _ = masking.random_masking(x, 0.75, rng=jax.random.key(0), strategy="grid",
                                      grid=grid)
  visible = 1 - np.asarray(mask).reshape(32, gh, gw)
  cells = visible.reshape(32, gh // 2, 2, gw // 2, 2).sum((2, 4))
  np.testing.assert_array_equal(cells, 1)
  # the same position in every cell of one image
  for v in visible:
    r, c = np.argwhere(v)[0]
    want = np.zeros((gh, gw))
    want[r % 2::2, c % 2::2] = 1
    np.testing.assert_array_equal(v, want)


def numpy_beit_blocks(uniforms, grid, num_masked, min_patches):
  """BEiT's ``MaskingGenerator`` in NumPy for one sample, drawing from ``uniforms(i)``
  (four numbers for draw ``i``) instead of Python's ``random``.

  Returns the union mask and every accepted block ``(top, left, h, w)``.
  """
  gh, gw = grid
  mask = np.zeros(grid, bool)
  count = failures = attempt = 0
  blocks = []
  while count < num_masked and failures < 10:   # BEiT: 10 tries, stop if none adds
    u = uniforms(attempt).astype(np.float32)
    attempt += 1
    remaining = num_masked - count
    target_area = np.float32(min_patches) + np.float32(remaining - min_patches) * u[0]
    aspect = np.exp(np.float32(np.log(1 / 0.3)) * (2 * u[1] - 1))
    h = max(int(np.round(np.sqrt(target_area * aspect))), 1)
    w = max(int(np.round(np.sqrt(target_area / aspect))), 1)
    if w < gw and h < gh:
      top = min(int(np.floor(u[2] * (gh - h + 1))), gh - h)
      left = min(int(np.floor(u[3] * (gw - w + 1))), gw - w)
      new = int((~mask[top:top + h, left:left + w]).sum())
      if 0 < new <= remaining:
        mask[top:top + h, left:left + w] = True
        count += new
        failures = 0
        blocks.append((top, left, h, w))
        continue
    failures += 1
  return mask, blocks


@pytest.mark.parametrize("grid,ratio", [((7, 7), 0.75), ((4, 4), 0.5), ((14, 14), 0.4),
                                        ((6, 8), 0.6)])
def test_blocks_are_rectangles_drawn_as_beit(grid, ratio):
  b, length = 8, grid[0] * grid[1]
  num_masked = length - int(length * (1 - ratio))
  lo = masking.block_min_patches(grid)
  assert lo == (4 if min(grid) > 2 else 1)
  key = jax.random.key(9)
  ours = np.asarray(jax.jit(lambda k: masking.block_masks(k, b, grid, num_masked))(key))
  uniforms = jax.jit(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (b, 4)))
  sizes = []
  for i in range(b):
    want, blocks = numpy_beit_blocks(lambda a: np.asarray(uniforms(a))[i], grid, num_masked,
                                     lo)
    np.testing.assert_array_equal(ours[i], want)
    assert 0 < ours[i].sum() <= num_masked and blocks
    union = np.zeros(grid, bool)
    for top, left, h, w in blocks:   # every block is an axis-aligned rectangle
      union[top:top + h, left:left + w] = True
      sizes.append(h * w)
    np.testing.assert_array_equal(union, ours[i])
  assert max(sizes) >= lo


@pytest.mark.parametrize("grid,ratio", [((7, 7), 0.75), ((14, 14), 0.5)])
def test_block_count_is_filled_up_outside_the_blocks(grid, ratio):
  b, length = 16, grid[0] * grid[1]
  noise = np.asarray(masking.sample_noise(jax.random.key(7), "block", b, grid, ratio))
  keep = int(length * (1 - ratio))
  in_block = noise >= 1
  assert (in_block.sum(1) <= length - keep).all()
  removed = np.ones(noise.shape, bool)
  np.put_along_axis(removed, np.argsort(noise, 1)[:, :keep], False, 1)
  assert (removed[in_block]).all()          # blocks are always removed
  assert removed.sum(1).tolist() == [length - keep] * b


@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.74])
def test_grid_refuses_other_ratios(ratio):
  with pytest.raises(ConfigError, match="model.masking='grid' keeps one patch of every 2x2"):
    masking.check_strategy("grid", ratio, (4, 4))


def test_bad_strategies_are_clear_errors():
  with pytest.raises(ConfigError, match="model.masking='blocks' is unknown"):
    masking.check_strategy("blocks", 0.75, (4, 4))
  with pytest.raises(ConfigError, match="even number of patches per side"):
    masking.check_strategy("grid", 0.75, (7, 7))
  with pytest.raises(ValueError, match="needs a grid of patches"):
    masking.random_masking(jnp.zeros((1, 16, 2)), 0.75, rng=jax.random.key(0), strategy="block")


def test_tube_masking_keeps_whole_tubes_as_before():
  """``tube`` through the one masking function: the same draw as the video model made
  with ``tube_noise`` and ``tube_visible`` before the strategies were gathered here."""
  grid, b = (2, 4, 4), 3
  x = jnp.asarray(np.random.default_rng(8).normal(size=(b, 32, 2)), jnp.float32)
  key = jax.random.key(6)
  noise = np.asarray(masking.tube_noise(key, b, grid))
  keep = masking.tube_visible(grid, 0.9)
  assert keep == 2 * (16 - int(0.9 * 16))
  kept, mask, ids_restore = masking.random_masking(x, 0.9, rng=key, strategy="tube", grid=grid)
  ids_shuffle = np.argsort(noise, axis=1, kind="stable")
  np.testing.assert_array_equal(np.asarray(ids_restore), np.argsort(ids_shuffle, 1))
  np.testing.assert_array_equal(np.asarray(kept),
                                np.take_along_axis(np.asarray(x), ids_shuffle[:, :keep, None], 1))
  removed = np.asarray(mask).reshape(b, 2, 16)
  np.testing.assert_array_equal(removed[:, 0], removed[:, 1])   # the same on every frame
  with pytest.raises(ConfigError, match="tube needs a video model"):
    masking.check_strategy("tube", 0.9, (4, 4))
  with pytest.raises(ConfigError, match="'block' masks images"):
    masking.check_strategy("block", 0.9, grid)


def test_explicit_noise_wins_over_the_strategy():
  noise = jnp.asarray(np.random.default_rng(6).random((2, 16)), jnp.float32)
  x = jnp.zeros((2, 16, 1))
  ranked = [masking.random_masking(x, 0.75, noise=noise, strategy=s, grid=(4, 4))
            for s in IMAGE_STRATEGIES]
  for out in ranked[1:]:
    for a, b in zip(out, ranked[0]):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------- in the model


def masked_panel_patches(png_path, row, image_size, patch_size, scale, num_rows):
  """``[gh, gw]`` bool of a reconstruction PNG's masked panel: True = a grey patch."""
  from PIL import Image
  pixels = np.asarray(Image.open(png_path).convert("L"))
  pad = 2
  header = pixels.shape[0] - (num_rows * (image_size + pad) + pad) * scale  # column titles
  pixels = pixels[header::scale, ::scale]
  y, x = pad + row * (image_size + pad), pad + (image_size + pad)   # column 1: masked
  panel = pixels[y:y + image_size, x:x + image_size].astype(int)
  g = image_size // patch_size
  patches = panel.reshape(g, patch_size, g, patch_size).transpose(0, 2, 1, 3)
  return (patches == 128).all(axis=(2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", IMAGE_STRATEGIES)
def test_short_pretraining_with_each_strategy_shows_its_masks(tmp_path, fmnist_available,
                                                               strategy):
  from conftest import load_config, tiny_overrides, training_rows
  from mae_jax import viz
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=2, batch=16)  # patch 7: 4x4
  config.model.masking = strategy
  config.eval_every_steps = 2
  pretrain.train_and_evaluate(config, str(tmp_path))
  losses = [row["loss"] for row in training_rows(tmp_path)]
  assert len(losses) == 2 and np.isfinite(losses).all()
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["masking"] == strategy
  png = os.path.join(tmp_path, "recon", "step_0000002.png")
  for row in range(config.num_recon_images):
    masked = masked_panel_patches(png, row, 28, 7, viz.default_scale(28),
                                  config.num_recon_images)
    assert masked.sum() == 12, masked          # 75% of 16 patches, the model's mask
    if strategy == "grid":
      np.testing.assert_array_equal((~masked).reshape(2, 2, 2, 2).sum((1, 3)), 1)


def test_model_config_selects_and_validates_the_strategy():
  from mae_jax import config_lib
  from mae_jax.models import registry
  config = config_lib.pretrain_defaults("tiny/7")
  config.data.update(image_size=28, channels=1)
  assert config.model.masking == "random"
  assert registry.build_mae(config).masking == "random"
  config.model.masking = "grid"
  assert registry.build_mae(config).masking == "grid"
  config.model.mask_ratio = 0.6
  with pytest.raises(ConfigError, match="model.masking='grid'.*model.mask_ratio=0.6"):
    registry.build_mae(config)
  del config.model.masking   # a workdir written before model.masking existed
  assert registry.build_mae(config).masking == "random"
