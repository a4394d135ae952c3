"""Attention implementations agree with the ``xla`` reference: outputs, loss, gradients.

``cudnn`` and ``splash`` need a GPU / TPU; their padding and masking logic is run
here on the CPU (``padded_attention`` with the XLA kernel, splash in Pallas
interpret mode) and compared with unpadded attention.
"""
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mae_jax.errors import ConfigError
from mae_jax.models import attention
from mae_jax.models.mae import MaskedAutoencoder


def qkv(b=2, n=50, h=2, d=16, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32) for _ in range(3))


def reference(q, k, v):
  return attention.attend(q, k, v, implementation="xla")[0]


def value_and_grads(fn, q, k, v):
  """A non-trivial scalar of the output, and its gradients wrt q, k, v."""
  w = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)
  scalar = lambda *a: jnp.sum(fn(*a) * w)
  return jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 2)))(q, k, v)


def assert_same(fn, q, k, v, rtol=2e-5, atol=2e-6):
  """Same output, and the same gradients of a weighted sum of it."""
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), reference(q, k, v), rtol=rtol, atol=atol)
  got, want = value_and_grads(fn, q, k, v), value_and_grads(reference, q, k, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want)


def test_reference_matches_numpy_softmax_attention():
  q, k, v = qkv(b=1, n=5, h=2, d=4)
  qn, kn, vn = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", qn, kn) / 2.0
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out, weights = attention.attend(q, k, v, implementation="xla")
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", p, vn), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weights, p, rtol=1e-5, atol=1e-7)


def test_dot_product_matches_reference():
  assert_same(lambda *a: attention.attend(*a, implementation="dot_product")[0], *qkv())


@pytest.mark.parametrize("n", [1, 64, 65, 197])
def test_padding_to_64_with_length_masks_equals_unpadded(n):
  """The ``cudnn`` path's padding + masks, run with the XLA kernel."""
  fn = lambda *a: attention.padded_attention(*a, multiple=64, implementation="xla")
  assert_same(fn, *qkv(n=n, h=1, d=8, seed=n))


def test_pad_length():
  x = jnp.ones((2, 197, 3))
  assert attention.pad_length(x, 64).shape == (2, 256, 3)
  assert attention.pad_length(x[:, :128], 64).shape == (2, 128, 3)
  np.testing.assert_array_equal(attention.pad_length(x, 64)[:, 197:], 0)


def test_splash_in_interpret_mode_equals_unpadded():
  fn = lambda *a: attention.splash_attention(*a, interpret=True)
  assert_same(fn, *qkv(b=2, n=50, h=2, d=64), rtol=1e-4, atol=1e-5)


def test_gpu_and_tpu_kernels_refuse_other_backends_clearly():
  q, k, v = qkv(n=8)
  backend = jax.default_backend()
  if backend != "gpu":
    with pytest.raises(ConfigError, match="cudnn needs an NVIDIA GPU"):
      attention.attend(q, k, v, implementation="cudnn")
  if backend != "tpu":
    with pytest.raises(ConfigError, match="splash needs a TPU"):
      attention.attend(q, k, v, implementation="splash")
  with pytest.raises(ConfigError, match="choose one of xla, dot_product, cudnn, splash"):
    attention.attend(q, k, v, implementation="flash")


# ----------------------------------------------------------------- whole model


def tiny_mae(attn, dtype=jnp.float32, remat="none"):
  return MaskedAutoencoder(patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                           decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                           norm_pix_loss=True, attention=attn, dtype=dtype, remat=remat)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), jnp.float32)
  noise = jnp.asarray(rng.random((3, 49)), jnp.float32)
  init = jax.jit(lambda: tiny_mae("xla").init({"params": jax.random.key(0)}, images,
                                                noise=noise))
  params = nn.unbox(init()["params"])
  return images, noise, params


@pytest.fixture(scope="module")
def reference_loss_and_grads(batch):
  return loss_and_grads(tiny_mae("xla"), batch)


def loss_and_grads(model, batch):
  images, noise, params = batch
  fn = lambda p: model.apply({"params": p}, images, noise=noise)[0]
  return jax.jit(jax.value_and_grad(fn))(params)


def assert_model_matches_reference(model, batch, reference, rtol=1e-5, atol=1e-6):
  loss, grads = loss_and_grads(model, batch)
  ref_loss, ref_grads = reference
  np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
  flat, ref_flat = jax.tree.leaves_with_path(grads), jax.tree.leaves_with_path(ref_grads)
  assert [p for p, _ in flat] == [p for p, _ in ref_flat]  # same parameter tree
  for (path, g), (_, r) in zip(flat, ref_flat):
    np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_model_dot_product_matches_xla(batch, reference_loss_and_grads):
  assert_model_matches_reference(tiny_mae("dot_product"), batch, reference_loss_and_grads)


def test_model_cudnn_padding_path_matches_xla(batch, reference_loss_and_grads, monkeypatch):
  """The whole model through ``cudnn``'s padding and length masks (XLA kernel)."""
  monkeypatch.setattr(attention, "_cudnn", lambda q, k, v: attention.padded_attention(
      q, k, v, multiple=attention.CUDNN_MULTIPLE, implementation="xla"))
  assert_model_matches_reference(tiny_mae("cudnn"), batch, reference_loss_and_grads)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_model_remat_policies_match_no_remat(batch, reference_loss_and_grads, remat):
  assert_model_matches_reference(tiny_mae("xla", remat=remat), batch,
                                 reference_loss_and_grads)


def test_bfloat16_compute_keeps_float32_params_and_loss_close(batch,
                                                             reference_loss_and_grads):
  images, noise, _ = batch
  model = tiny_mae("dot_product", dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, images,
                                             noise=noise))
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(shapes))} == {jnp.dtype(jnp.float32)}
  loss, grads = loss_and_grads(model, batch)
  ref_loss, _ = reference_loss_and_grads
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-2)


def test_splash_under_a_two_device_mesh_matches_reference():
  """Under ``jax.set_mesh`` the kernel runs per shard (batch split over data)."""
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from mae_jax.models import attention
      from mae_jax.parallel import mesh as mesh_lib, sharding
      mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "model": 1})
      assert mesh.size == 2
      rng = np.random.default_rng(0)
      q, k, v = (jnp.asarray(rng.normal(size=(4, 50, 2, 64)), jnp.float32) for _ in range(3))
      want = attention.attend(q, k, v, implementation="xla")[0]
      with jax.set_mesh(mesh), sharding.logical_rules():
        got = jax.jit(lambda *a: attention.splash_attention(*a, interpret=True))(q, k, v)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
      print("ok")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
