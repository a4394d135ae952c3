"""Meshes, sharding rules, FSDP memory, resharding restore and remat on fake CPU devices,
for the image MAE and the video MAE (clips, spacetime patches, tube masking).

The multi-device cases need 8 CPU devices, which must be set before JAX starts:
the module runs itself once as ``python tests/test_parallel.py`` with
``--xla_force_host_platform_device_count=8`` and the tests read its JSON report.
"""
import json
import os
import sys
import tempfile

import numpy as np
import pytest

from conftest import TINY_FLAGS, eight_device_report, load_config, run_cli, tiny_overrides

MESHES = [(8, 1, 1), (2, 2, 2), (1, 8, 1), (1, 1, 8)]
STEPS = 8
VIDEO_STEPS = 3
RTOL = 2e-3


def parallel_config(steps: int = STEPS, batch: int = 16):
  """Tiny, but every width divisible by 8 so each mesh axis can take all 8 devices."""
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=steps, batch=batch)
  config.model.update(embed_dim=64, num_heads=8, decoder_embed_dim=64, decoder_num_heads=8)
  config.optim.base_lr = 4e-3  # large enough that the 8 steps move the loss
  return config


def video_parallel_config(steps: int = VIDEO_STEPS, batch: int = 8):
  """The video demo shrunk: 4 frames of 32x32, tubelets 2x8x8, tube masking."""
  config = tiny_overrides(load_config("pretrain_video_fmnist", "masking=tube"), steps=steps,
                          batch=batch)
  config.model.update(embed_dim=64, num_heads=8, decoder_embed_dim=64, decoder_num_heads=8,
                      patch_size=8)
  config.data.image_size = 32
  config.data.video.num_frames = 4
  config.optim.base_lr = 4e-3
  return config


# ----------------------------------------------------------------- the 8-device worker


def _setup(config, devices, mesh_shape):
  import jax
  from mae_jax.models import registry
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.train import loop, optim, step as step_lib
  mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.AXES, mesh_shape)), devices=devices)
  model = registry.build_mae(config)
  num_steps, per_epoch = loop.total_steps(config)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, num_steps,
                                          per_epoch)
  tx = optim.adamw(config.optim, schedule)
  state, shardings = step_lib.create_train_state(model, tx, mesh,
                                                 registry.input_shape(config), config.seed)
  step = step_lib.make_train_step(model, tx, mesh, shardings, schedule, config.seed)
  del jax
  return mesh, model, tx, state, shardings, step


def _run(config, images, devices, mesh_shape):
  """Losses and grad norms of ``len(images)`` steps, plus memory and the final state."""
  import jax
  from mae_jax.parallel import sharding as sharding_lib
  mesh, _, _, state, shardings, step = _setup(config, devices, mesh_shape)
  per_device = sharding_lib.bytes_per_device((state.params, state.opt_state))
  planned = sharding_lib.planned_bytes_per_device((state.params, state.opt_state),
                                                  (shardings.params, shardings.opt_state))
  batch_sharding = sharding_lib.batch_sharding(mesh)
  losses, grad_norms = [], []
  for batch in images:
    state, metrics = step(state, jax.device_put(batch, batch_sharding))
    host = jax.device_get(metrics)
    losses.append(float(host["loss"]))
    grad_norms.append(float(host["grad_norm"]))
  return dict(losses=losses, grad_norms=grad_norms, max_bytes=max(per_device.values()),
              planned_bytes=planned), state, shardings


def worker() -> dict:
  import jax
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax import checkpoint_io
  from mae_jax import workdir as workdir_lib
  from mae_jax.train import checkpoint as ckpt_lib
  assert jax.device_count() == 8, jax.devices()
  config = parallel_config()
  rng = np.random.default_rng(0)
  images = [rng.normal(size=(config.batch_size, 28, 28, 1)).astype(np.float32)
            for _ in range(STEPS)]
  report = {}
  report["1"], _, _ = _run(config, images, jax.devices()[:1], (1, 1, 1))
  states = {}
  for mesh_shape in MESHES:
    key = "x".join(map(str, mesh_shape))
    report[key], states[key], _ = _run(config, images, jax.devices(), mesh_shape)

  # A checkpoint saved on data=8 restores onto data=2,fsdp=2,model=2 and onto one device.
  saved = states["8x1x1"]
  with tempfile.TemporaryDirectory() as workdir:
    workdir_lib.save_config(workdir, config)
    ckpt = checkpoint_io.Checkpointer(workdir, with_data=False, async_save=False)
    ckpt.save(STEPS, saved, config.to_dict(), force=True)
    from mae_jax.models import registry
    from mae_jax.parallel import mesh as mesh_lib
    target = mesh_lib.make_mesh(dict(data=2, fsdp=2, model=2))
    abstract, _ = ckpt_lib.abstract_train_state(config, registry.build_mae(config), target)
    target_shardings = jax.tree.map(lambda a: a.sharding, abstract)
    restored = ckpt.restore(STEPS, abstract)
    ckpt.close()
    import mae_jax
    loaded = mae_jax.load(workdir)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                      saved, restored)
  layout = jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim),
                        restored, target_shardings)
  one_device = jax.tree.map(
      lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))) and
      len(b.sharding.device_set) == 1, saved.params, loaded.params)
  report["reshard"] = dict(
      values_equal=all(jax.tree.leaves(same)), target_layout=all(jax.tree.leaves(layout)),
      load_step=loaded.step, load_equal=all(jax.tree.leaves(one_device)),
      qkv_spec=str(restored.params["blocks_0"]["attn"]["qkv"]["kernel"].sharding.spec))
  report["remat"] = remat_losses_and_grads(config, images[0][:4])

  video = video_parallel_config()
  clips = [rng.integers(0, 256, size=registry.input_shape(video, video.batch_size))
           .astype(np.float32) / 255 for _ in range(VIDEO_STEPS)]
  report["video"] = {"1": _run(video, clips, jax.devices()[:1], (1, 1, 1))[0],
                     "2x2x2": _run(video, clips, jax.devices(), (2, 2, 2))[0]}
  report["video_remat"] = remat_losses_and_grads(video, clips[0][:4])
  report["batch_rows"] = list(sharding_lib.process_batch_rows(
      sharding_lib.batch_sharding(jax.make_mesh((8, 1, 1), ("data", "fsdp", "model"))), 16))
  return report


def remat_losses_and_grads(config, images) -> dict:
  """Loss and gradient of each ``model.remat`` policy, as (loss, max |grad - grad_none|)."""
  import flax.linen as nn
  import jax
  from mae_jax.models import registry
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  params = nn.unbox(jax.jit(registry.build_mae(config).init)(rngs, images[:1])["params"])
  out, reference = {}, None
  for policy in ("none", "full", "dots"):
    config.model.remat = policy
    model = registry.build_mae(config)
    fn = jax.value_and_grad(lambda p: model.apply(
        {"params": p}, images, train=True, rngs={"masking": jax.random.key(2)})[0])
    loss, grads = jax.jit(fn)(params)
    jaxpr = str(jax.make_jaxpr(fn)(params))
    rematerialised = "remat" in jaxpr or "checkpoint" in jaxpr
    reference = grads if reference is None else reference
    diff = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), grads, reference)))
    scale = max(float(np.max(np.abs(np.asarray(g)))) for g in jax.tree.leaves(reference))
    out[policy] = dict(loss=float(loss), grad_diff=diff, grad_scale=scale,
                       rematerialised=rematerialised)
  config.model.remat = "none"
  return out


# ----------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def report(fmnist_available):
  return eight_device_report(__file__)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_mesh_matches_one_device(report, mesh_shape):
  want, got = report["1"], report["x".join(map(str, mesh_shape))]
  assert len(got["losses"]) == STEPS
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=RTOL)
  np.testing.assert_allclose(got["grad_norms"], want["grad_norms"], rtol=RTOL)
  assert want["losses"][-1] < want["losses"][0]  # the steps do train


def test_fsdp_shrinks_params_and_optimizer_bytes(report):
  replicated, fsdp = report["8x1x1"]["max_bytes"], report["1x8x1"]["max_bytes"]
  assert replicated == report["1"]["max_bytes"]  # data parallelism copies everything
  assert fsdp == report["1x8x1"]["planned_bytes"]
  assert 1 / 8 <= fsdp / replicated <= 1 / 8 * 1.2, (fsdp, replicated)
  tensor = report["1x1x8"]["max_bytes"]
  assert tensor < replicated / 2  # heads/mlp split over model


def test_checkpoint_reshards_onto_another_mesh_and_one_device(report):
  r = report["reshard"]
  assert r["values_equal"] and r["target_layout"], r
  assert r["load_step"] == STEPS and r["load_equal"], r
  assert "fsdp" in r["qkv_spec"] and "model" in r["qkv_spec"], r


def test_process_rows_cover_the_batch_in_order(report):
  assert report["batch_rows"] == list(range(16))


def test_video_mesh_matches_one_device(report):
  """Clips take the same sharding rules: data x fsdp x model equals one device."""
  want, got = report["video"]["1"], report["video"]["2x2x2"]
  assert len(got["losses"]) == VIDEO_STEPS
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=RTOL)
  np.testing.assert_allclose(got["grad_norms"], want["grad_norms"], rtol=RTOL)
  assert got["max_bytes"] < want["max_bytes"] / 2  # fsdp and model split the state


@pytest.mark.parametrize("model", ["image", "video"])
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policy_gives_same_loss_and_grads(report, policy, model):
  remat = report["remat" if model == "image" else "video_remat"]
  none, got = remat["none"], remat[policy]
  np.testing.assert_allclose(got["loss"], none["loss"], rtol=1e-5)
  assert got["grad_diff"] <= 1e-5 * none["grad_scale"] + 1e-7, (got, none)
  assert none["grad_scale"] > 0
  assert got["rematerialised"] and not none["rematerialised"]


def test_unknown_remat_policy_is_a_config_error():
  from mae_jax.errors import ConfigError
  from mae_jax.models import vit
  with pytest.raises(ConfigError, match="model.remat='some'"):
    vit.block_class("some")


def test_mesh_shape_rules():
  from mae_jax.errors import ConfigError
  from mae_jax.parallel.mesh import mesh_shape
  assert mesh_shape(dict(data=-1, fsdp=2, model=1), 8) == (4, 2, 1)
  assert mesh_shape(dict(data=2, fsdp=2, model=-1), 8) == (2, 2, 2)
  with pytest.raises(ConfigError, match="at most one"):
    mesh_shape(dict(data=-1, fsdp=-1, model=1), 8)
  with pytest.raises(ConfigError, match="does not divide"):
    mesh_shape(dict(data=-1, fsdp=3, model=1), 8)
  with pytest.raises(ConfigError, match="but 8 are available"):
    mesh_shape(dict(data=2, fsdp=2, model=1), 8)


def test_indivisible_parameter_is_a_config_error():
  import jax
  from jax.sharding import AxisType, Mesh
  from mae_jax.errors import ConfigError
  from mae_jax.models import registry
  from mae_jax.parallel import sharding as sharding_lib
  from mae_jax.train import optim, step as step_lib
  config = parallel_config()
  config.model.update(embed_dim=60, num_heads=6)
  model = registry.build_mae(config)
  tx = optim.adamw(config.optim, lambda count: 0.0)
  _, boxed = step_lib.abstract_state(model, tx, (1, 28, 28, 1))
  # A mesh object only needs its axis sizes here: 8 "devices" from one CPU device.
  devices = np.array([jax.devices()[0]] * 8).reshape(1, 8, 1)
  fake = Mesh(devices, ("data", "fsdp", "model"), axis_types=(AxisType.Auto,) * 3)
  with pytest.raises(ConfigError, match=r"size 60 in dimension \d, which mesh.fsdp=8"):
    sharding_lib.shardings_of(boxed, fake)


CLI = ["pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS,
       "--config.num_train_steps=1"]
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def _one_line_error(proc, pattern):
  assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  assert pattern in lines[0], lines[0]


def test_cli_mesh_product_not_device_count(tmp_path, fmnist_available):
  proc = run_cli(*CLI, f"--workdir={tmp_path}/w", "--config.mesh.data=2",
                 "--config.mesh.fsdp=2", "--config.mesh.model=1", env=EIGHT)
  _one_line_error(proc, "= 4 devices, but 8 are available")


def test_cli_batch_not_divisible_by_data_parallel_size(tmp_path, fmnist_available):
  proc = run_cli(*CLI, f"--workdir={tmp_path}/w", "--config.batch_size=36",
                 "--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.mesh.model=1",
                 env=EIGHT)
  _one_line_error(proc, "batch_size=36 is not divisible by the data-parallel size 8")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print(json.dumps(worker()))
