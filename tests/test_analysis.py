"""``mae_jax.analysis``: every measure on a hand-computable case, the hooks, the command."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import load_config, run_cli, tiny_overrides
from mae_jax import viz_analysis
from mae_jax.analysis import attention_kernel, hooks, interpolation, low_rank, stability
from mae_jax.models import masking
from mae_jax.models.mae import MaskedAutoencoder
from mae_jax.models.pos_embed import sincos_2d


def tiny_model(**kw):
  args = dict(patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
              decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75)
  args.update(kw)
  return MaskedAutoencoder(**args)


def init(model, shape, seed=0):
  rngs = {"params": jax.random.key(seed), "masking": jax.random.key(1)}
  return nn.unbox(hooks.jit(model.init)(rngs, jnp.zeros(shape))["params"])


@pytest.fixture(scope="module")
def tiny():
  model = tiny_model()
  images = np.random.default_rng(0).normal(size=(6, 16, 16, 1)).astype(np.float32)
  params = init(model, images.shape)
  noise = hooks.make_noise(3, len(images), 16)
  return model, params, images, noise


# ------------------------------------------------------------------------ hooks


def test_hooks_change_no_output_and_add_no_parameters(tiny):
  model, params, images, noise = tiny
  x, n = jnp.asarray(images), jnp.asarray(noise)
  plain = hooks.jit(lambda p: model.apply({"params": p}, x, noise=n))(params)
  recorded, state = hooks.jit(lambda p: model.apply({"params": p}, x, noise=n,
                                                    mutable=["intermediates"]))(params)
  for a, b in zip(plain, recorded):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  inter = state["intermediates"]
  assert set(inter) == {"blocks_0", "blocks_1", "decoder_blocks_0"}
  assert inter["blocks_0"]["attn"]["attn_weights"][0].shape == (6, 2, 5, 5)
  # the analysis clone (xla attention, no remat) has exactly the same parameters
  for other in (hooks.analysis_model(model.clone(attention="dot_product", remat="full")),
                model.clone(remat="full")):
    abstract = jax.eval_shape(lambda: other.init(
        {"params": jax.random.key(0), "masking": jax.random.key(1)},
        jnp.zeros(images.shape))["params"])
    abstract = nn.unbox(abstract)
    assert jax.tree.map(lambda a: a.shape, abstract) == \
        jax.tree.map(lambda a: a.shape, params)
  trace = hooks.capture(model.clone(attention="dot_product"), params, images, noise,
                        chunk_size=4)
  np.testing.assert_allclose(trace.pred, np.asarray(plain[1]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(trace.loss, float(plain[0]), rtol=1e-5)


def test_capture_maps_tokens_to_patches(tiny):
  model, params, images, noise = tiny
  trace = hooks.capture(model, params, images, noise)
  assert len(trace.encoder_hidden) == 3 and len(trace.decoder_hidden) == 2
  assert trace.encoder_hidden[0].shape == (6, 5, 32)
  # token j of the encoder is patch argsort(noise)[j - 1]
  np.testing.assert_array_equal(trace.encoder_positions[:, 1:],
                                np.argsort(noise, axis=1)[:, :4])
  assert (trace.encoder_positions[:, 0] == -1).all()
  # block-0 input = patch embedding of that patch + its position embedding
  kernel = np.asarray(params["patch_embed"]["proj"]["kernel"]).reshape(16, 32)
  embed = np.asarray(masking.patchify(jnp.asarray(images), 4)) @ kernel + \
      np.asarray(params["patch_embed"]["proj"]["bias"])
  embed = embed + sincos_2d(32, (4, 4))[None]
  want = np.take_along_axis(embed, trace.encoder_positions[:, 1:, None], axis=1)
  np.testing.assert_allclose(trace.encoder_hidden[0][:, 1:], want, rtol=1e-4, atol=1e-4)
  # and the recorded states chain through the blocks
  for stack, hs in (("blocks", trace.encoder_hidden), ("decoder_blocks", trace.decoder_hidden)):
    for i in range(len(hs) - 1):
      out = hooks.jit(stability.block_function(model, params, stack, i))(jnp.asarray(hs[i]))
      np.testing.assert_allclose(np.asarray(out), hs[i + 1], rtol=1e-4, atol=1e-4)
  # decoder mask tokens sit exactly at the removed patches
  np.testing.assert_array_equal(trace.mask, np.asarray(
      (np.argsort(np.argsort(noise, 1), 1) >= 4), np.float32))


# ------------------------------------------------------------- attention kernel


def _decoder_like(batch=2, grid=(3, 3)):
  length = grid[0] * grid[1]
  pos = np.concatenate([np.full((batch, 1), -1), np.tile(np.arange(length), (batch, 1))], 1)
  return pos, length + 1


def test_kernel_of_uniform_and_identity_attention():
  pos, n = _decoder_like()
  weights = np.zeros((2, 2, n, n))
  weights[:, 0] = 1.0 / n                 # head 0: uniform over all 10 tokens
  weights[:, 1] = np.eye(n)               # head 1: every token attends to itself
  kernel, counts = attention_kernel.displacement_kernel(weights, pos, pos, (3, 3))
  assert kernel.shape == (2, 5, 5)
  np.testing.assert_allclose(kernel[0], np.full((5, 5), 0.1))
  want = np.zeros((5, 5))
  want[2, 2] = 1.0
  np.testing.assert_allclose(kernel[1], want)
  # pairs at displacement (dy, dx) on a 3x3 grid: (3 - |dy|)(3 - |dx|), times 2 images
  d = np.abs(np.arange(-2, 3))
  np.testing.assert_array_equal(counts, 2 * np.outer(3 - d, 3 - d))
  stats = attention_kernel.attention_stats(weights, pos, pos, (3, 3), patch_size=4)
  # by hand: uniform over patch keys -> mean pairwise centre distance; identity -> 0
  coords = np.stack(np.divmod(np.arange(9), 3), 1)
  dist = 4 * np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
  np.testing.assert_allclose(stats["mean_distance"], [dist.mean(), 0.0], atol=1e-12)
  np.testing.assert_allclose(stats["entropy"], [np.log(10), 0.0], atol=1e-12)
  np.testing.assert_allclose(stats["cls_share"], [0.1, 0.0], atol=1e-12)
  r2 = attention_kernel.kernel_r2(weights, pos, pos, (3, 3))
  assert np.isnan(r2[0]) and r2[1] == pytest.approx(1.0)


def test_kernel_follows_shuffled_encoder_tokens():
  """Attention to the patch to the right, written in shuffled token order."""
  rng = np.random.default_rng(0)
  grid, b, keep = (4, 4), 8, 16
  noise = rng.random((b, 16))
  ids_restore = np.argsort(np.argsort(noise, 1), 1)
  enc_pos, _ = hooks.token_positions(ids_restore, keep)
  weights = np.zeros((b, 1, 17, 17))
  for i in range(b):
    where = {p: t for t, p in enumerate(enc_pos[i])}
    for t, p in enumerate(enc_pos[i]):
      right = p + 1 if p >= 0 and p % 4 < 3 else p    # the last column attends to itself
      weights[i, 0, t, where[right]] = 1.0
  kernel, _ = attention_kernel.displacement_kernel(weights, enc_pos, enc_pos, grid)
  k = kernel[0]
  assert k[3, 4] == pytest.approx(1.0)    # (dy, dx) = (0, +1): every such pair
  assert k[3, 3] == pytest.approx(0.25)   # (0, 0): only the last column's 4 of 16
  others = np.ones_like(k, bool)
  others[3, 3] = others[3, 4] = False
  assert np.nanmax(np.abs(k[others])) == 0.0
  stats = attention_kernel.attention_stats(weights, enc_pos, enc_pos, grid, patch_size=2)
  assert stats["mean_distance"][0] == pytest.approx(0.75 * 2)


def test_decoder_query_split_and_key_share():
  pos, n = _decoder_like(batch=1)
  visible = np.zeros((1, n), bool)
  visible[0, [1, 5]] = True               # patches 0 and 4 visible
  weights = np.zeros((1, 1, n, n))
  weights[0, 0, :, 1] = 1.0               # everyone attends to patch 0
  share = attention_kernel.key_share(weights, pos, pos, visible, q_select=~visible)
  assert share[0] == pytest.approx(1.0)
  masked_q = ~visible
  masked_q[0, 0] = False
  stats = attention_kernel.attention_stats(weights, pos, pos, (3, 3), 1, q_select=masked_q)
  coords = np.stack(np.divmod(np.arange(9), 3), 1)
  dist = np.sqrt((coords ** 2).sum(-1))   # distance of every patch to patch 0
  want = np.mean([dist[p] for p in range(9) if p not in (0, 4)])
  assert stats["mean_distance"][0] == pytest.approx(want)


# -------------------------------------------------------------------- stability


def test_stability_of_identity_and_linear_blocks():
  x = np.random.default_rng(0).normal(size=(3, 5, 8))
  same = stability.layer_stability([x, x, x])
  assert same["relative_change"] == [0.0, 0.0]
  np.testing.assert_allclose(same["cosine"], [1.0, 1.0])
  np.testing.assert_allclose(same["norm_growth"], [1.0, 1.0])
  scaled = stability.layer_stability([x, 2.5 * x, -2.5 * x])
  np.testing.assert_allclose(scaled["relative_change"], [1.5, 2.0])
  np.testing.assert_allclose(scaled["cosine"], [1.0, -1.0])
  np.testing.assert_allclose(scaled["norm_growth"], [2.5, 1.0])
  key = jax.random.key(0)
  xs = jnp.asarray(x, jnp.float32)
  ident = stability.lipschitz(lambda v: v, xs, key)
  for name in ident:
    assert ident[name] == pytest.approx(1.0, rel=1e-3), name
  a = np.diag([5.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]).astype(np.float32)
  lin = stability.lipschitz(lambda v: v @ jnp.asarray(a), xs, key, iters=30)
  assert lin["lipschitz_jacobian_max"] == pytest.approx(5.0, rel=1e-4)
  assert 0.5 <= lin["lipschitz_random_max"] < 5.0
  # a block whose every token is 3x its input: all estimates 3
  triple = stability.lipschitz(lambda v: 3.0 * v, xs, key)
  assert triple["lipschitz_random_mean"] == pytest.approx(3.0, rel=1e-3)
  assert triple["lipschitz_jacobian_mean"] == pytest.approx(3.0, rel=1e-3)


def test_stability_of_a_model_runs_on_patch_tokens(tiny):
  model, params, images, noise = tiny
  trace = hooks.capture(model, params, images, noise)
  out = stability.analyze(model, params, trace, max_images=4, iters=5)
  assert len(out["encoder"]["lipschitz_jacobian_max"]) == 2
  assert len(out["decoder"]["cosine"]) == 1
  assert all(np.isfinite(v) and v > 0 for v in out["encoder"]["lipschitz_jacobian_max"])


# --------------------------------------------------------------------- low rank


def _rank_r_patches(n, length=12, d=6, r=2, q=3, seed=0, z_seed=0):
  """Patch matrices ``A(z) B``: ``B`` fixed (r x d), ``A`` linear in ``z`` (q dims).

  Every patch matrix has rank r; every image vector lies in a q-dim subspace.
  """
  rng = np.random.default_rng(seed)
  basis_b = rng.normal(size=(r, d))
  basis_a = rng.normal(size=(q, length, r))
  z = np.random.default_rng(1000 + z_seed).normal(size=(n, q))
  return np.einsum("nq,qlr,rd->nld", z, basis_a, basis_b)


def test_spectrum_of_exactly_rank_r_patches():
  patches = _rank_r_patches(20, r=2)
  s = low_rank.singular_values(patches)
  assert s.shape == (20, 6)
  assert (low_rank.numerical_rank(s) == 2).all()
  assert (s[:, 2:] < 1e-9 * s[:, :1]).all()
  np.testing.assert_allclose(low_rank.energy_topk(s, 2), 1.0)
  assert low_rank.energy_topk(s, 1).max() < 1.0
  pooled = low_rank.pooled_singular_values(patches)
  assert low_rank.numerical_rank(pooled) == 2
  # equal singular values -> effective rank exactly r
  u = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 3)))[0]
  v = np.linalg.qr(np.random.default_rng(2).normal(size=(6, 3)))[0]
  assert low_rank.effective_rank(low_rank.singular_values((u @ v.T)[None]))[0] == \
      pytest.approx(3.0)
  # patch layout agrees with the model's patchify
  images = np.random.default_rng(3).normal(size=(2, 8, 8, 3))
  np.testing.assert_allclose(low_rank.patch_matrices(images, 4),
                             np.asarray(masking.patchify(jnp.asarray(images), 4)), atol=1e-6)


def test_rank_k_completion_is_exact_for_rank_q_data():
  train = _rank_r_patches(300, q=3)
  test = _rank_r_patches(50, q=3, z_seed=1)          # same subspace, new images
  visible, masked = np.array([0, 3, 5, 8]), np.array([1, 2, 4, 6, 7, 9, 10, 11])
  err = low_rank.rank_k_completion(train, test, visible, masked, [0, 1, 2, 3, 10 ** 9])
  scale = float(np.mean(test[:, masked] ** 2))
  assert err[3] < 1e-10 * scale and err[10 ** 9] < 1e-10 * scale
  assert err[2] > 1e-3 * scale and err[0] > err[1] > err[2]
  # the same through images and the curve API (patch 2 on a 4x6 image = 6 patches of 4)
  images = masking.unpatchify(jnp.asarray(_rank_r_patches(200, length=6, d=4, q=2)), 2,
                              (2, 3), 1)
  test_images = masking.unpatchify(jnp.asarray(_rank_r_patches(20, length=6, d=4, q=2,
                                                               z_seed=1)), 2, (2, 3), 1)
  curve = low_rank.completion_curve(np.asarray(images, np.float64),
                                    np.asarray(test_images, np.float64), 2, ratios=(0.5,),
                                    ranks=(0, 1, 2), num_patterns=2)
  assert curve[0.5]["2"] < 1e-10 and curve[0.5]["full"] < 1e-10 < curve[0.5]["1"]


# ---------------------------------------------------------------- interpolation


def test_influence_of_a_copy_function_is_on_the_copied_patch():
  k, m, d = 5, 4, 3
  visible = np.random.default_rng(0).normal(size=(k, d)).astype(np.float32)
  infl = interpolation.influence_matrix(lambda v: jnp.broadcast_to(2.0 * v[2], (m, d)),
                                        visible)
  want = np.zeros((m, k))
  want[:, 2] = 2.0 * np.sqrt(d)        # || 2 I_d ||_F
  np.testing.assert_allclose(infl, want, atol=1e-6)
  # on a 4x4 grid: visible patches 0, 3, 12, 15 (corners) and 5; masked 6, 9, 10, 11
  vis = np.array([[0, 3, 12, 15, 5]])
  msk = np.array([[6, 9, 10, 11]])
  near = interpolation.influence_stats(infl[None], vis, msk, (4, 4))       # copies patch 12
  # patch 12 = (3, 0): Chebyshev distance to 6 (1,2) = 2, 9 (2,1) = 1, 10 = 2, 11 = 3
  assert near["far_share"] == pytest.approx(0.75)
  # far visible patches per masked patch, by hand: 6: 0,12,15; 9: 0,3,15; 10: 0,3,12;
  # 11: 0,3,12,5
  assert near["far_share_uniform"] == pytest.approx(13 / 20)
  on_5 = np.zeros((1, m, k))
  on_5[0, :, 4] = 1.0                                                       # copies patch 5
  stats = interpolation.influence_stats(on_5, vis, msk, (4, 4))
  # patch 5 = (1, 1): Chebyshev 1 to 6 and 9 and 10, 2 to 11
  assert stats["far_share"] == pytest.approx(0.25)
  # 5 is (one of) the nearest for 6, 9, 10 (tied with 15), but 15 alone for 11
  assert stats["nearest_share"] == pytest.approx(0.75)


def test_model_influence_matches_the_full_jacobian(tiny):
  model, params, images, noise = tiny
  out = interpolation.model_influence(model, params, images[:2], noise[:2], chunk_size=2)
  vis, msk = out["visible"], out["masked"]

  def block_norms(p, n):
    def f(p):
      image = masking.unpatchify(p[None], 4, (4, 4), 1)
      return model.apply({"params": params}, image, noise=n[None])[1][0]
    return jnp.sqrt((jax.jacfwd(f)(p) ** 2).sum(axis=(1, 3)))   # [L, d, L, d] -> [L, L]

  patches = masking.patchify(jnp.asarray(images[:2]), 4)
  fulls = np.asarray(hooks.jit(jax.vmap(block_norms))(patches, jnp.asarray(noise[:2])))
  for i, full in enumerate(fulls):
    np.testing.assert_allclose(out["influence"][i], full[np.ix_(msk[i], vis[i])],
                               rtol=1e-4, atol=1e-6)
    # masked patches never influence anything: the encoder drops them
    assert full[:, msk[i]].max() == 0.0


def test_local_baselines_on_hand_cases():
  grid = (2, 2)
  patches = np.array([[[1.0] * 4, [2.0] * 4, [3.0] * 4, [4.0] * 4]])
  mask = np.array([[0.0, 0.0, 0.0, 1.0]])
  filled = interpolation.nearest_copy(patches, mask, grid)
  np.testing.assert_array_equal(filled[0, 3], [2.0] * 4)   # tie (1 and 2): lower index
  assert interpolation.masked_mse(filled, patches, mask) == pytest.approx(4.0)
  # a horizontal ramp with its middle column of patches removed: diffusion is exact
  ramp = np.tile(np.arange(12, dtype=np.float32), (12, 1))[None, :, :, None]
  mask = np.zeros((1, 9))
  mask[0, [1, 4, 7]] = 1.0
  holes = interpolation.pixel_mask(mask, 4, (3, 3))
  assert holes.sum() == 48
  inpainted = interpolation.diffusion_inpaint(ramp, holes, iters=2000)
  np.testing.assert_allclose(inpainted, ramp, atol=1e-3)
  errs = interpolation.reconstruction_errors(ramp, np.zeros((1, 9, 16)), mask, 4, False)
  assert errs["diffusion"] < 1e-5 < errs["nearest_copy"]
  assert errs["model"] == pytest.approx(float(np.mean(ramp[0, :, 4:8] ** 2)))


# ---------------------------------------------------------------------- plots


def test_plots_are_drawn():
  img = viz_analysis.heatmap_grid(np.random.default_rng(0).random((2, 3, 5, 5)),
                                  ["a", "b"], ["x", "y", "z"], "title")
  arr = np.asarray(img)
  assert arr.shape[2] == 3 and arr.std() > 10
  chart = viz_analysis.line_chart([("one", [0, 1, 2], [1.0, 0.5, float("nan")]),
                                   ("two", [0, 1, 2], [0.1, 0.2, 0.3])], "t", "x", "y",
                                  log_y=True)
  assert chart.size[0] > 640 and chart.size[1] == 400 and np.asarray(chart).std() > 10
  bars = viz_analysis.bar_chart(["a", "b"], [("s", [1.0, 2.0])], "t", "y", reference=1.0)
  assert np.asarray(bars).std() > 10
  assert viz_analysis.nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


# -------------------------------------------------------------------- command


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, fmnist_available):
  """Two randomly initialised tiny Fashion-MNIST workdirs (seeds 0 and 1)."""
  from mae_jax import analysis
  config = tiny_overrides(load_config("pretrain_fmnist"))
  root = tmp_path_factory.mktemp("analysis")
  trained, rand = str(root / "trained"), str(root / "random")
  analysis.make_random_workdir(trained, config, seed=0)
  analysis.make_random_workdir(rand, config, seed=1)
  return config, trained, rand


@pytest.mark.slow
def test_analyze_command_writes_report_json_and_pngs(tmp_path, workdirs):
  config, trained, rand = workdirs
  out = tmp_path / "out"
  run_cli("analyze", f"--workdir={trained}", f"--out={out}", f"--compare={rand}",
          "--num_images=24", "--jacobian_images=2", "--mask_ratios=0.5,0.75",
          "--num_train=300", check=True)
  text = (out / "report.md").read_text()
  for heading in ("## 1. Attention", "## 2. Representations", "## 3. Image patches",
                  "## 4. Masked patches"):
    assert heading in text
  assert text.count("**Verdict") == 7        # 3 model claims x 2 models + the data claim
  pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
  for name in ("attention_kernels_encoder.png", "attention_kernels_encoder_random.png",
               "attention_distance.png", "stability.png", "lipschitz.png", "spectrum.png",
               "completion_rank.png", "reconstruction.png", "influence_distance.png"):
    assert name in pngs, (name, pngs)
    assert f"]({name})" in text
    with Image.open(out / name) as im:
      assert im.size[0] > 100
  data = json.loads((out / "analysis.json").read_text())
  assert [m["label"] for m in data["models"]] == ["trained", "random"]
  first = data["models"][0]
  assert first["meta"]["step"] == 0
  assert len(first["result"]["attention"]["encoder"]) == config.model.depth
  kernel = np.array(first["result"]["attention"]["encoder"][0]["kernel"], dtype=float)
  assert kernel.shape == (2, 7, 7)          # 2 heads, 4x4 patch grid
  assert set(first["summary"]) >= {"loss", "influence_far_share", "mse_model",
                                   "lipschitz_jacobian_max"}
  assert set(first["result"]["interpolation"]["reconstruction_vs_ratio"]) == {"0.5", "0.75"}
  assert data["data"]["7"]["summary"]["patch_matrix_shape"] == [16, 49]


def test_analyze_refuses_incomparable_workdirs(tmp_path, workdirs):
  from mae_jax import analysis
  from mae_jax.errors import UserError
  _, first, _ = workdirs
  small = tiny_overrides(load_config("pretrain_fmnist"))
  small.data.image_size = 14
  analysis.make_random_workdir(str(tmp_path / "b"), small)
  with pytest.raises(UserError, match="same input"):
    analysis.analyze_workdirs(first, str(tmp_path / "out"), compare=str(tmp_path / "b"))
  with pytest.raises(UserError, match="mask_ratios"):
    analysis.analyze_workdirs(first, str(tmp_path / "out"), mask_ratios=["1.5"])
  assert not os.path.exists(tmp_path / "out")
