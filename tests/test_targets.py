"""Reconstruction targets (``model.target``: pixels, hog, teacher) and the contrastive
term (``model.contrastive``): each checked against an independent NumPy version (HOG
written from MaskFeat's description, the EMA formula, SimCLR's NT-Xent), the same loss
on 1 and 8 devices (images and clips), and from the command line: exact resume, the
k-NN monitor, the grids, probing from the encoder and export of the encoder.

The multi-device cases need 8 CPU devices, set before JAX starts: the module runs
itself as ``python tests/test_targets.py`` and the tests read its JSON report.
"""
import json
import math
import os
import sys

import numpy as np
import pytest

from conftest import TINY_FLAGS, eight_device_report, run_cli, tiny_classifier
from conftest import training_rows

# ----------------------------------------------------------------- NumPy references


def hog_reference(image: np.ndarray, patch: int, cell: int, bins: int = 9) -> np.ndarray:
  """``[gh * gw, (patch/cell)^2 * C * bins]``: MaskFeat's HOG of one ``[H, W, C]`` image,
  one pixel at a time: Sobel gradients with reflect padding, the magnitude times a
  Gaussian (``patch`` wide, std ``patch // 2``, normalised to sum 1) repeated over the
  patches, the unsigned orientation ``atan2(gx, gy)`` cut into ``bins`` equal bins
  over 180 degrees, magnitudes summed per cell, each cell's histogram per channel
  divided by its L2 norm; per patch its cells row by row, then channel, then bin."""
  image = image.astype(np.float64)
  h, w, c = image.shape
  sobel_x = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="reflect")
  t = np.arange(patch, dtype=np.float64)
  g1 = np.exp(-0.5 * ((t - t.mean()) / max(patch // 2, 1)) ** 2)
  gauss = np.outer(g1, g1) / np.outer(g1, g1).sum()
  hist = np.zeros((h // cell, w // cell, c, bins))
  for i in range(h):
    for j in range(w):
      window = padded[i:i + 3, j:j + 3]
      gx = np.einsum("ab,abc->c", sobel_x, window)
      gy = np.einsum("ab,abc->c", sobel_x.T, window)
      for ch in range(c):
        angle = math.atan2(gx[ch], gy[ch])
        b = int(math.floor(angle / math.pi * bins)) % bins
        hist[i // cell, j // cell, ch, b] += math.hypot(gx[ch], gy[ch]) * \
            gauss[i % patch, j % patch]
  norms = np.sqrt((hist ** 2).sum(-1, keepdims=True))
  hist = hist / np.maximum(norms, 1e-12)
  per = patch // cell
  rows = []
  for pi in range(h // patch):
    for pj in range(w // patch):
      rows.append(np.concatenate([hist[pi * per + a, pj * per + b].ravel()
                                  for a in range(per) for b in range(per)]))
  return np.stack(rows)


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
  """SimCLR's NT-Xent, one anchor at a time: ``-log(exp(s(i, pos) / t) / sum over the
  other 2N - 1 embeddings of exp(s(i, k) / t))`` with cosine similarity ``s``."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  total = 0.0
  for i in range(2 * n):
    pos = (i + n) % (2 * n)
    others = [k for k in range(2 * n) if k != i]
    denom = sum(math.exp(z[i] @ z[k] / temperature) for k in others)
    total += -math.log(math.exp(z[i] @ z[pos] / temperature) / denom)
  return total / (2 * n)


# ----------------------------------------------------------------- unit tests


@pytest.mark.parametrize("shape,patch,cell", [((2, 16, 16, 3), 8, 4), ((1, 28, 28, 1), 4, 4),
                                              ((1, 14, 14, 1), 7, 7)])
def test_hog_matches_numpy_reference(shape, patch, cell):
  from mae_jax.models import targets
  images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  ours = np.asarray(targets.hog_targets(images, patch, cell))
  assert ours.shape == (shape[0], (shape[1] // patch) ** 2, (patch // cell) ** 2 * shape[3] * 9)
  for k in range(shape[0]):
    np.testing.assert_allclose(ours[k], hog_reference(images[k], patch, cell), atol=2e-5)


def test_hog_of_a_clip_is_per_frame():
  """Clips: each ``t x p x p`` patch holds the HOG of its ``t`` frames' patches in order."""
  from mae_jax.models import targets
  clip = np.random.default_rng(1).normal(size=(1, 4, 16, 16, 1)).astype(np.float32)
  ours = np.asarray(targets.hog_targets(clip, 8, 4, tubelet=2))   # [1, 2 * 2 * 2, 2 * 36]
  frames = [hog_reference(clip[0, f], 8, 4) for f in range(4)]    # [4 patches, 36] each
  want = np.stack([np.concatenate([frames[2 * t][s], frames[2 * t + 1][s]])
                   for t in range(2) for s in range(4)])
  np.testing.assert_allclose(ours[0], want, atol=2e-5)


def test_hog_cell_must_divide_the_patch(tmp_path):
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/w",
                 "--config.model.target=hog", "--config.model.hog_cell=3", "--dry_run")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert "model.hog_cell=3 does not divide model.patch_size=4" in lines[0]


def test_ema_update_and_momentum_schedule_match_their_formulas():
  from mae_jax.models import targets
  rng = np.random.default_rng(2)
  params = {"blocks_0": {"w": rng.normal(size=(3, 4))}, "norm": {"scale": rng.normal(size=4)},
            "decoder_pred": {"w": rng.normal(size=(2, 2))}}
  teacher = targets.encoder_params({k: {n: rng.normal(size=v.shape) for n, v in p.items()}
                                    for k, p in params.items()})
  assert set(teacher) == {"blocks_0", "norm"}   # the decoder is not the teacher's
  new = targets.ema_update(teacher, params, 0.9)
  for k in teacher:
    for n in teacher[k]:
      np.testing.assert_allclose(new[k][n], 0.9 * teacher[k][n] + 0.1 * params[k][n],
                                 rtol=1e-6)
  start, end, steps = 0.9998, 1.0, 100
  for t, want in ((0, start), (50, start + 0.5 * (end - start)), (100, end), (150, end)):
    np.testing.assert_allclose(float(targets.teacher_momentum(t, start, end, steps)), want,
                               rtol=1e-7)


def test_the_train_step_moves_the_teacher_by_the_ema_and_regresses_its_features():
  """One step of ``make_train_step``: the teacher after it is ``m t + (1 - m) p`` with the
  new params ``p``; the loss is the masked MSE to the teacher's average of its top-K
  instance-normalised blocks (recomputed here in NumPy from the block outputs)."""
  import jax
  import jax.numpy as jnp
  from conftest import load_config, tiny_overrides
  from mae_jax.models import registry, targets
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.train import optim, step as step_lib
  config = tiny_overrides(load_config("pretrain_fmnist"), batch=8)
  config.model.update(target="teacher", depth=2, teacher_top_k=2)
  model = registry.build_mae(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  tx = optim.adamw(config.optim, lambda n: 1e-3)
  state, shardings = step_lib.create_train_state(model, tx, mesh, registry.input_shape(config))
  images = np.random.default_rng(3).normal(size=(8, 28, 28, 1)).astype(np.float32)
  # the target from the block outputs, in NumPy
  _, inter = model.apply({"params": state.params}, jnp.asarray(images),
                         method=model.teacher_features, capture_intermediates=True)
  blocks = [np.asarray(inter["intermediates"][f"blocks_{i}"]["__call__"][0])[:, 1:]
            .astype(np.float64) for i in range(2)]
  inorm = [(b - b.mean(1, keepdims=True)) / np.sqrt(b.var(1, keepdims=True) + 1e-5)
           for b in blocks]
  want = (inorm[0] + inorm[1]) / 2
  got = np.asarray(targets.teacher_targets(model, state.teacher, state.params,
                                           jnp.asarray(images)))
  np.testing.assert_allclose(got, want, atol=1e-4)
  teacher0 = jax.device_get(state.teacher)
  step = step_lib.make_train_step(model, tx, mesh, shardings, lambda s: 1e-3, 0,
                                  teacher_momentum=(0.5, 1.0, 10))
  state, metrics = step(state, jnp.asarray(images))
  m = float(metrics["teacher_momentum"])
  assert m == pytest.approx(0.5)
  params = jax.device_get(state.params)
  for path, t1 in jax.tree_util.tree_leaves_with_path(jax.device_get(state.teacher)):
    t0 = _at(teacher0, path)
    np.testing.assert_allclose(t1, m * t0 + (1 - m) * _at(params, path), rtol=1e-5, atol=1e-7)


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return np.asarray(tree)


def test_info_nce_matches_numpy():
  from mae_jax.models import targets
  rng = np.random.default_rng(4)
  z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
  np.testing.assert_allclose(float(targets.info_nce(z1, z2, 0.2)),
                             nt_xent_reference(z1, z2, 0.2), rtol=1e-5)


# ----------------------------------------------------------------- 8 devices


def worker() -> dict:
  """Losses of a few steps of each objective on 1 device and on 8-device meshes, the
  teacher's shardings, and InfoNCE of embeddings sharded over 8 devices."""
  import jax
  from mae_jax.models import registry, targets
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.parallel import sharding as sharding_lib
  from test_parallel import _run, parallel_config, video_parallel_config
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(0)
  report = {}
  # each objective on one device and on a mesh of 8: the data axis alone for HOG and
  # the contrastive term (its negatives cross every device), data x fsdp x model for
  # the teacher (its params sharded like the student's)
  for name, overrides, mesh_shape in (
      ("hog", dict(target="hog", hog_cell=7), (8, 1, 1)),
      ("teacher", dict(target="teacher", teacher_top_k=1), (2, 2, 2)),
      ("contrastive", dict(contrastive=0.5), (8, 1, 1))):
    config = parallel_config(steps=2)
    config.model.update(**overrides)
    images = [rng.normal(size=(config.batch_size, 28, 28, 1)).astype(np.float32)
              for _ in range(2)]
    report[name] = {"1": _run(config, images, jax.devices()[:1], (1, 1, 1))[0]}
    result, state, _ = _run(config, images, jax.devices(), mesh_shape)
    report[name]["x".join(map(str, mesh_shape))] = result
    if hasattr(state, "teacher"):
      same = jax.tree.map(lambda t, p: t.sharding.is_equivalent_to(p.sharding, t.ndim),
                          state.teacher, targets.encoder_params(state.params))
      report[name]["teacher_sharded_like_params"] = [all(jax.tree.leaves(same))]
  for name, overrides in (("video_hog", dict(target="hog", hog_cell=4)),
                          ("video_teacher_contrastive", dict(target="teacher", teacher_top_k=1,
                                                             contrastive=0.5))):
    video = video_parallel_config(steps=2)
    video.model.update(**overrides)
    clips = [rng.integers(0, 256, size=registry.input_shape(video, video.batch_size))
             .astype(np.float32) / 255 for _ in range(2)]
    report[name] = {"1": _run(video, clips, jax.devices()[:1], (1, 1, 1))[0],
                    "2x2x2": _run(video, clips, jax.devices(), (2, 2, 2))[0]}
  z1, z2 = rng.normal(size=(2, 16, 8)).astype(np.float32)
  mesh = mesh_lib.make_mesh(dict(data=8, fsdp=1, model=1))   # the trainer's mesh
  sharded = [jax.device_put(z, sharding_lib.batch_sharding(mesh, 2)) for z in (z1, z2)]
  loss = jax.jit(lambda a, b: targets.info_nce(a, b, 0.1))
  report["info_nce"] = dict(eight=float(loss(*sharded)), one=float(loss(z1, z2)),
                            numpy=nt_xent_reference(z1, z2, 0.1),
                            devices=len(sharded[0].sharding.device_set))
  return report


@pytest.fixture(scope="module")
def report(fmnist_available):
  return eight_device_report(__file__, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hog", "teacher", "contrastive", "video_hog",
                                  "video_teacher_contrastive"])
def test_every_objective_gives_one_devices_loss_on_8(report, name):
  runs = report[name]
  for mesh, result in runs.items():
    if mesh in ("1", "teacher_sharded_like_params"):
      continue
    np.testing.assert_allclose(result["losses"], runs["1"]["losses"], rtol=2e-3,
                               err_msg=f"{name} {mesh}")
    np.testing.assert_allclose(result["grad_norms"], runs["1"]["grad_norms"], rtol=5e-3,
                               err_msg=f"{name} {mesh}")
  assert all(runs.get("teacher_sharded_like_params", [True]))


@pytest.mark.slow
def test_info_nce_negatives_span_8_devices(report):
  r = report["info_nce"]
  assert r["devices"] == 8
  np.testing.assert_allclose(r["eight"], r["numpy"], rtol=1e-5)
  np.testing.assert_allclose(r["eight"], r["one"], rtol=1e-6)


# ----------------------------------------------------------------- the command line

OBJECTIVES = {"hog": ["--config.model.target=hog", "--config.model.hog_cell=7"],
              "teacher": ["--config.model.target=teacher", "--config.model.teacher_top_k=1",
                          "--config.model.teacher_momentum_steps=20"],
              "contrastive": ["--config.model.contrastive=0.5"]}
# a schedule that does not depend on the run's length, so a 3-step run resumed to 6 is
# the 6-step run
CONSTANT = ["--config.optim.warmup_steps=0", "--config.optim.min_lr=0.0001875",
            "--config.checkpoint.every_steps=3"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, fmnist_available):
  """Per objective: a 6-step run, and a 3-step run resumed to 6, with the k-NN monitor
  and the grids on."""
  root = tmp_path_factory.mktemp("objectives")
  out = {}
  for name, flags in OBJECTIVES.items():
    base = ["pretrain", "--config=configs/pretrain_fmnist.py", *TINY_FLAGS, *flags, *CONSTANT,
            "--config.monitor.every_steps=3", "--config.monitor.bank_size=64",
            "--config.monitor.query_size=32", "--config.eval_every_steps=6"]
    run_cli(*base, f"--workdir={root / name}", "--config.num_train_steps=6", check=True)
    run_cli(*base, f"--workdir={root / name}_split", "--config.num_train_steps=3", check=True)
    proc = run_cli(*base, f"--workdir={root / name}_split", "--config.num_train_steps=6",
                   check=True)
    assert "resumed from step 3" in proc.stdout + proc.stderr
    out[name] = root / name
  return root, out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_cli_resume_is_exact_with_the_monitor_and_grids(resumed, name):
  root, _ = resumed
  full, split = training_rows(root / name), training_rows(root / f"{name}_split")
  assert [r["step"] for r in split] == list(range(1, 7))
  for key in ("loss", "grad_norm"):
    assert [r[key] for r in split] == [r[key] for r in full], key
  assert os.path.exists(root / name / "recon" / "step_0000006.png")
  evals = json.loads((root / name / "eval.json").read_text())
  assert 0 <= evals["knn_top1"] <= 1
  if name == "teacher":  # the demo's momentum rises from 0.99 to 1 over 20 updates
    np.testing.assert_allclose([r["teacher_momentum"] for r in full],
                               [0.99 + 0.01 * u / 20 for u in range(6)], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hog", "teacher"])
def test_encoder_of_another_target_probes_exports_and_draws(resumed, name, tmp_path):
  _, workdirs = resumed
  workdir = workdirs[name]
  config_args = [f"--config.init_from={workdir}", "--config.model.embed_dim=32",
                 "--config.model.depth=1", "--config.model.num_heads=2",
                 "--config.model.patch_size=7", "--config.batch_size=32",
                 "--config.data.eval_max_examples=64", "--config.checkpoint.async_save=False"]
  run_cli("linprobe", "--config=configs/linprobe_fmnist.py:steps=2",
          f"--workdir={tmp_path}/lp", *config_args, check=True)
  assert json.loads((tmp_path / "lp" / "eval.json").read_text())["top1"] >= 0
  run_cli("export", f"--workdir={workdir}", "--format=timm", f"--out={tmp_path}/t.safetensors",
          check=True)
  run_cli("export", f"--workdir={workdir}", "--format=official", f"--out={tmp_path}/o.pth",
          check=True)
  from safetensors.numpy import load_file
  timm = load_file(f"{tmp_path}/t.safetensors")
  assert "blocks.0.attn.qkv.weight" in timm and not any("decoder" in k for k in timm)
  from mae_jax.export import mae as export_mae
  sd, _, _ = export_mae.load_file(f"{tmp_path}/o.pth", "official")
  assert "blocks.0.attn.qkv.weight" in sd
  assert not any(k.startswith(("decoder", "mask_token")) for k in sd)   # encoder only
  proc = run_cli("export", f"--workdir={workdir}", "--format=hf", f"--out={tmp_path}/hf")
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1 and f"model.target={name}" in lines[0]
  proc = run_cli("analyze", f"--workdir={workdir}", f"--out={tmp_path}/analysis")
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1 and f"model.target={name}" in lines[0]
  run_cli("visualize", f"--workdir={workdir}", f"--out={tmp_path}/g.png", "--num_images=2",
          check=True)
  from PIL import Image
  assert Image.open(tmp_path / "g.png").size[0] < 3 * 30 * 4   # two columns, not four


@pytest.mark.slow
def test_contrastive_head_is_not_exported(resumed, tmp_path):
  _, workdirs = resumed
  run_cli("export", f"--workdir={workdirs['contrastive']}", "--format=official",
          f"--out={tmp_path}/o.pth", check=True)
  from mae_jax.export import mae as export_mae
  sd, _, _ = export_mae.load_file(f"{tmp_path}/o.pth", "official")
  assert "decoder_pred.weight" in sd and not any("contrastive" in k for k in sd)


@pytest.mark.slow
def test_objectives_run_on_clips_and_8_devices_from_the_cli(tmp_path, fmnist_available):
  video = ["--config.model.embed_dim=32", "--config.model.depth=1",
           "--config.model.num_heads=2", "--config.model.decoder_embed_dim=32",
           "--config.model.decoder_depth=1", "--config.model.decoder_num_heads=2",
           "--config.model.patch_size=8", "--config.data.image_size=32",
           "--config.data.video.num_frames=4", "--config.batch_size=8",
           "--config.num_train_steps=2", "--config.log_every_steps=1",
           "--config.eval_every_steps=2", "--config.num_recon_images=2",
           "--config.probe.enabled=False", "--config.monitor.every_steps=0"]
  for name, flags in (("hog", ["--config.model.target=hog", "--config.model.hog_cell=4"]),
                      ("teacher", ["--config.model.target=teacher",
                                   "--config.model.teacher_top_k=1",
                                   "--config.model.contrastive=0.5"])):
    run_cli("pretrain", "--config=configs/pretrain_video_fmnist.py",
            f"--workdir={tmp_path}/{name}", *video, *flags, check=True)
    assert len(training_rows(tmp_path / name)) == 2
  proc = run_cli("pretrain", "--config=configs/pretrain_fmnist.py", f"--workdir={tmp_path}/8",
                 *TINY_FLAGS, "--config.num_train_steps=2", "--config.model.target=teacher",
                 "--config.model.teacher_top_k=1", "--config.model.contrastive=0.5",
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(training_rows(tmp_path / "8")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["target=hog", "target=teacher", "contrastive=0.045"])
def test_each_methods_imagenet_recipe_runs_locally(tmp_path, fmnist_available, arg):
  """``configs/pretrain_imagenet.py:variant=B/16,<method>`` holds the method's published
  recipe; shrunk by ``runlocal`` it trains one step on a CPU."""
  from conftest import load_config
  from mae_jax.train import pretrain
  full = load_config("pretrain_imagenet", f"variant=B/16,{arg}")
  if arg == "target=hog":   # MaskFeat (mmpretrain's reproduction)
    assert (full.model.hog_cell, full.model.mask_ratio, full.model.masking) == (8, 0.4, "block")
    assert (full.batch_size, full.optim.base_lr, full.num_epochs) == (2048, 2e-4, 300)
  elif arg == "target=teacher":   # data2vec 2.0 (fairseq's base_images_only_task.yaml)
    assert tuple(full.model.teacher_momentum) == (0.9998, 0.99999)
    assert (full.model.teacher_top_k, full.model.mask_ratio, full.num_train_steps) == \
        (10, 0.8, 375300)
  else:
    assert (full.model.contrastive, full.model.mask_ratio) == (0.045, 0.5)
  config = load_config("pretrain_imagenet", f"variant=B/16,{arg},runlocal")
  results = pretrain.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 1 and np.isfinite(results["recon_loss"])


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print(json.dumps(worker()))
