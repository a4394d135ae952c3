"""Benchmarks: the FLOP formula against the design numbers, a CPU smoke run of the
throughput benchmark and of the one-command GPU suite with ml_collections / TFDS /
TensorFlow / grain unimportable (as on the accelerator image), the plain JAX step's math
against the model's, and the README's tables against what the results render."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

BENCH = os.path.join(REPO, "benchmarks")


def _load(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("variant,gflop", [("B/16", 58.7), ("L/16", 124.5)])
def test_flops_match_the_design_numbers(variant, gflop):
  flops = _load("flops")
  got = flops.variant_train_flops(variant, image_size=224, channels=3, mask_ratio=0.75) / 1e9
  assert abs(got - gflop) / gflop < 0.01, got


def test_flops_by_hand_for_one_block():
  flops = _load("flops")
  # 10 tokens, width 8, mlp 32: qkv 2*10*8*24, proj 2*10*8*8, fc1+fc2 2*2*10*8*32, attn 4*100*8
  assert flops.block_flops(10, 8) == 3840 + 1280 + 10240 + 3200


def jaxpr_matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every ``dot_general`` and convolution in ``jaxpr`` and the
  jaxprs nested in it (jit, custom_jvp, remat): an independent count of the FLOPs the
  formula describes."""
  import math
  from jax.extend import core
  total = 0
  for eqn in jaxpr.eqns:
    out = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(out) * math.prod(lhs[i] for i in contract)
    elif eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      per_output = math.prod(kernel) // kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2 * math.prod(out) * per_output
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, core.ClosedJaxpr):
          total += jaxpr_matmul_flops(sub.jaxpr)
        elif isinstance(sub, core.Jaxpr):
          total += jaxpr_matmul_flops(sub)
  return total


@pytest.mark.parametrize("frames,masking,cls", [(0, "random", True), (4, "random", False),
                                               (4, "tube", False), (4, "random", True)])
def test_flops_equal_the_matmuls_of_the_model(frames, masking, cls):
  """The formula against the model's own forward pass: images (cls token, 2-D
  patches) and clips (2x8x8 tubelets, random or tube masking, with a cls token as
  MAE-ST's Kinetics recipe or without as VideoMAE)."""
  import jax
  import jax.numpy as jnp
  from mae_jax import config_lib
  from mae_jax.models import registry
  flops = _load("flops")
  c = config_lib.pretrain_defaults("tiny/8")
  if frames:
    config_lib.video_defaults(c, tubelet_size=2, num_frames=frames)
    c.model.update(masking=masking, use_cls_token=cls)
  c.model.update(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                 decoder_num_heads=2)
  c.data.update(image_size=32, channels=3)
  model = registry.build_mae(c)
  clips = jnp.zeros(registry.input_shape(c, batch=2))
  params = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)}, clips))
  jaxpr = jax.make_jaxpr(lambda p, x: model.apply(p, x, rngs={"masking": jax.random.key(2)}))(
      params, clips)
  m = c.model
  want = flops.mae_forward_flops(
      image_size=32, patch_size=8, channels=3, embed_dim=32, depth=2, decoder_embed_dim=16,
      decoder_depth=1, mlp_ratio=m.mlp_ratio, mask_ratio=m.mask_ratio, num_frames=frames,
      tubelet_size=2 if frames else 0, use_cls_token=m.use_cls_token, masking=m.masking)
  assert jaxpr_matmul_flops(jaxpr.jaxpr) == 2 * want


def test_video_flops_by_hand():
  flops = _load("flops")
  # 16x224x224, 2x16x16 tubelets: 8 * 14 * 14 = 1568 tokens; tube masking at 0.9 keeps
  # 196 - int(176.4) = 20 per time step
  assert flops.num_tokens(224, 16, num_frames=16, tubelet_size=2) == 1568
  assert flops.visible_tokens(224, 16, 0.9, 16, 2, "tube") == 160
  assert flops.visible_tokens(224, 16, 0.9, 16, 2, "random") == 156
  one_frame = flops.mae_forward_flops(image_size=224, patch_size=16, channels=3, embed_dim=8,
                                      depth=0, decoder_embed_dim=8, decoder_depth=0,
                                      mask_ratio=0.9, num_frames=2, tubelet_size=2,
                                      use_cls_token=False)
  # patch embedding 196 x (2*16*16*3) x 8, decoder embedding 19 x 8 x 8, head 196 x 8 x 1536
  assert one_frame == 2 * (196 * 1536 * 8 + 19 * 8 * 8 + 196 * 8 * 1536)


def test_peak_table():
  flops = _load("flops")
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.peak_flops("NVIDIA H200") == 989e12
  assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert flops.peak_flops("cpu") is None


BLOCKED = ("ml_collections", "tensorflow", "tensorflow_datasets", "grain")


# (arguments, model, the HF row's impl, its num_params minus ours)
IMAGES = (["--variant=tiny/7", "--image_size=28", "--channels=1"], "vit-tiny/7", "hf_vitmae",
          17 * 128 + 17 * 64)   # HF counts its two fixed position tables as parameters
CLIPS = (["--variant=tiny/8", "--image_size=32", "--channels=3", "--num_frames=4",
          "--tubelet=2", "--mask_ratio=0.9"], "vit-tiny/8", "hf_videomae",
         -(4 * 128 + 2 * 64))   # VideoMAE has no key bias (ours: zeros in every block)


@pytest.mark.slow
@pytest.mark.parametrize("case", [IMAGES, CLIPS], ids=["images", "clips"])
def test_throughput_benchmark_runs_on_a_bare_jax_install(tmp_path, case):
  shape_args, model, peer, extra_params = case
  code = ("import sys, runpy\n"
          + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
          + "sys.argv[0] = 'pretrain_throughput.py'\n"
          + "runpy.run_path('benchmarks/pretrain_throughput.py', run_name='__main__')\n")
  out = tmp_path / "rows.jsonl"
  args = [*shape_args, "--batch=8", "--steps=2", "--warmup=0", "--repeats=1",
          "--attention=dot_product", "--cpu_cores=1", f"--out={out}"]
  hf = importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")
  args.append("--hf" if hf else "--no-hf")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)  # a hang guard only
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert rows == [json.loads(line) for line in out.read_text().splitlines()]
  ours = [r for r in rows if r["impl"] == "mae_jax"]
  assert len(ours) == 1
  row = ours[0]
  for key in ("model", "device", "batch", "img_per_s", "mfu", "peak_mem_gib", "first_step_s",
              "attention", "dtype", "remat"):
    assert key in row, key
  assert row["model"] == model and row["device"] == "cpu" and row["batch"] == 8
  assert row["img_per_s"] > 0 and row["mfu"] is None and row["dtype"] == "float32"
  assert row["first_step_s"] > 0 and row["peak_mem_gib"] > 0
  if case is CLIPS:
    assert (row["num_frames"], row["tubelet_size"], row["masking"]) == (4, 2, "tube")
    flops = _load("flops")
    assert row["gflop_per_img"] * 1e9 == flops.variant_train_flops(
        "tiny/8", 32, 3, 0.9, num_frames=4, tubelet_size=2, use_cls_token=False,
        masking="tube")
  if hf:
    theirs = [r for r in rows if r["impl"] == peer]
    assert len(theirs) == 1 and theirs[0]["attention"] == "sdpa"
    assert row["ratio_vs_hf"] == pytest.approx(row["img_per_s"] / theirs[0]["img_per_s"])
    # the same architecture up to parameters that change nothing
    assert theirs[0]["num_params"] - row["num_params"] == extra_params
    assert np.isfinite(theirs[0]["loss"]) and np.isfinite(row["loss"])


def test_throughput_benchmark_uses_config_libs_videomae_layout():
  from mae_jax import config_lib
  bench = _load("pretrain_throughput")
  c = config_lib.pretrain_defaults("tiny/8")
  config_lib.videomae_layout(c)
  assert {k: c.model[k] for k in bench.VIDEOMAE_LAYOUT} == bench.VIDEOMAE_LAYOUT
  before = config_lib.pretrain_defaults("tiny/8").model.to_dict()
  assert {k for k in c.model.to_dict() if c.model[k] != before.get(k)} <= set(
      bench.VIDEOMAE_LAYOUT)


@pytest.mark.slow
def test_mae_vs_scratch_sweep_in_a_tiny_mode(tmp_path, fmnist_available, caplog):
  """The sweep of ``paper_trends.py --mae_vs_scratch`` on a 2-step pretraining and
  2-step fine-tunes: both arms, finished runs reused, the summary against NumPy, the
  report and its re-rendering."""
  import logging
  import numpy as np
  from conftest import load_config, tiny_overrides
  from mae_jax.train import pretrain
  trends = _load("paper_trends")
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=2, batch=16)
  pretrained = str(tmp_path / "pretrain")
  pretrain.train_and_evaluate(config, pretrained)
  mode = dict(trends.HEADLINE_MODE, seeds=(0,), finetune_arg="steps=2",
              overrides={"model.embed_dim": 32, "model.depth": 1, "model.num_heads": 2,
                         "model.patch_size": 7, "batch_size": 16},
              eval_examples=64, probe_train=128, pixels_train=256)
  runs = tmp_path / "runs"
  with caplog.at_level(logging.INFO):
    one = trends.mae_vs_scratch(pretrained, mode, str(runs), threads=0)
  assert caplog.text.count("init_from: loaded") == 1                     # the MAE arm
  assert caplog.text.count("training from a random initialisation") == 1  # scratch
  assert one["verdict"]["verdict"].endswith("ahead on one seed (no standard error)")
  for init, init_from, decay in (("mae", pretrained, 0.75), ("scratch", "", 1.0)):
    with open(runs / f"{init}_seed0" / "config.json") as f:
      saved = json.load(f)
    assert (saved["init_from"], saved["seed"], saved["optim"]["layer_decay"]) == (
        init_from, 0, decay)
    assert saved["num_train_steps"] == 2 and saved["model"]["embed_dim"] == 32
    (r,) = one["runs"][init]
    assert 0.0 <= r["top1"] <= r["top5"] <= 1.0 and r["cpu_minutes"] > 0
    # a second seed as if another process had finished it: the sweep reuses it
    (runs / f"{init}_seed1").mkdir()
    other = dict(r, seed=1, top1=0.25 if init == "mae" else 0.5)
    (runs / f"{init}_seed1" / "run.json").write_text(json.dumps(other))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    report = trends.mae_vs_scratch(pretrained, dict(mode, seeds=(0, 1)), str(runs), 0)
  assert caplog.text.count("finished before, reusing its result") == 4
  for init in ("mae", "scratch"):
    top1 = [r["top1"] for r in report["runs"][init]]
    assert [r["seed"] for r in report["runs"][init]] == [0, 1]
    assert report["summary"][init]["mean"] == pytest.approx(np.mean(top1))
    assert report["summary"][init]["std"] == pytest.approx(np.std(top1, ddof=1))
  ref = report["references"]
  assert ref["raw_pixels_all_train_images"] == 256 and ref["probe_train_images"] == 128
  assert ref["probe_test_images"] == 64
  for key in ("raw_pixels_all_top1", "raw_pixels_probe_top1", "random_init_probe_top1",
              "linear_probe_top1"):
    assert 0.1 < ref[key] <= 1.0, key      # 10 classes: chance is 0.1
  mean = {k: 100 * v["mean"] for k, v in report["summary"].items()}
  assert report["verdict"]["delta_points"] == pytest.approx(mean["mae"] - mean["scratch"],
                                                            abs=0.01)
  report.update(hardware="a test CPU", date="2026-01-01", total_minutes=0.1, jax="x")
  trends.write_headline_report(report, str(tmp_path / "out"))
  text = (tmp_path / "out" / "mae_vs_scratch.md").read_text()
  mae = report["summary"]["mae"]
  assert f"**{100 * mae['mean']:.1f} ± {100 * mae['std']:.1f}**" in text
  assert report["verdict"]["verdict"] in text and "| seed 0 | seed 1 |" in text
  trends.main(["--mae_vs_scratch", "--render_only", f"--out={tmp_path / 'out'}"])
  assert (tmp_path / "out" / "mae_vs_scratch.md").read_text() == text


def test_paper_trends_sampling_sweep_report(tmp_path):
  """The sampling sweep (Table 1(f)) is read from results and compared with the paper;
  a report written before ``model.masking`` existed still renders."""
  trends = _load("paper_trends")
  mode = trends.MODES["quick"]
  base = trends.baseline(mode)
  assert [p for p in trends.points(mode, ["sampling"])] == [
      base, dict(base, masking="block", mask_ratio=0.5),
      dict(base, masking="block", mask_ratio=0.75), dict(base, masking="grid")]
  top1 = {("random", 0.75): 0.70, ("block", 0.5): 0.695, ("block", 0.75): 0.60,
          ("grid", 0.75): 0.66}
  results = [dict(p, pretrain_loss=0.5, linprobe_top1=top1[(p["masking"], p["mask_ratio"])],
                  finetune_top1=0.6, seconds=dict(pretrain=60, linprobe=30, finetune=30),
                  date="2026-01-02") for p in trends.points(mode, ["sampling"])]
  report = dict(mode="quick", mode_settings=mode, hardware="a CPU", date="2026-01-02",
                total_minutes=8.0, results=results)
  trends.write_report(report, str(tmp_path))
  v = report["verdicts"]
  assert v["sampling_block_75_linprobe_minus_random"] == -10.0
  assert v["sampling_block_75_linprobe_paper_minus_random"] == -9.6
  assert v["sampling_block_50_linprobe"] == "no clear difference"
  assert v["sampling_grid_75_linprobe"] == "worse" and v["sampling_linprobe_reproduced"]
  md = (tmp_path / "paper_trends.md").read_text()
  assert "| grid | 0.75 | 0.500 | 66.0 | 60.0 | 66.0 | 84.0 |" in md
  assert "## (a)" not in md and "Mask sampling: reproduced" in md
  results[2]["linprobe_top1"] = 0.69          # block 75% within noise of random
  trends.write_report(report, str(tmp_path))
  assert not report["verdicts"]["sampling_linprobe_reproduced"]
  # the committed report (which may predate the sampling sweep) renders again
  with open(os.path.join(BENCH, "results", "paper_trends.json")) as f:
    old = trends.normalize(json.load(f))
  trends.write_report(old, str(tmp_path / "old"))
  assert "## (c) Norm-pix loss" in (tmp_path / "old" / "paper_trends.md").read_text()


HLO = """\
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %ag = f32[32,8]{1,0} all-gather(%x), channel_id=1, replica_groups=mesh['data'=1,'fsdp'=8] {'fsdp'}, dimensions={0}
  %ar = (f32[4,8]{1,0}, bf16[16]{0}) all-reduce(%a, %b), channel_id=2, replica_groups=[1,8]<=[8], to_apply=%add
}
%cond (p: (s32[], f32[4,8])) -> pred[] {
  %c = pred[] compare(%i, %n), direction=LT
}
ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %w = (s32[], f32[4,8]{1,0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %rs = f32[2,8]{1,0} reduce-scatter(%g), channel_id=3, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, to_apply=%add
}
"""


def test_collective_bytes_counts_loop_bodies_by_trip_count():
  cm = _load("compile_memory")
  got = cm.collective_bytes(HLO)
  # all-gather operand: the 32x8 f32 result over 8 devices, 12 times
  assert got["all-gather"] == 12 * 32 * 8 * 4 // 8
  # all-reduce: a 4x8 f32 and a 16-long bf16 operand, 12 times
  assert got["all-reduce"] == 12 * (4 * 8 * 4 + 16 * 2)
  # reduce-scatter operand: the 2x8 result times its group of 4, once
  assert got["reduce-scatter"] == 2 * 8 * 4 * 4
  assert got["all-to-all"] == got["collective-permute"] == 0


def test_sizing_table_arithmetic():
  sizing = _load("sizing")
  # the paper: 1600 epochs of 1,281,167 images in 31 h on 64 TPU v3 chips at 123 TFLOP/s
  rate, mfu = sizing.paper_mfu()
  assert rate == pytest.approx(1600 * 1281167 / (31 * 3600))
  assert mfu == pytest.approx(rate * 124.53e9 / (64 * 123e12), rel=1e-3)
  # 8 H100 at 40% MFU on ViT-L/16
  assert sizing.img_per_s("L/16", 989e12, 8, 0.4) == pytest.approx(0.4 * 8 * 989e12 / 124.53e9,
                                                                   rel=1e-3)
  assert "| 1 node, 8 x H200 |" in sizing.markdown(0.4)


def _tiny_mae(frames: int):
  """A tiny MAE config of ``pretrain_throughput`` (VideoMAE's layout for clips)."""
  bench = _load("pretrain_throughput")
  shape = ["--variant=tiny/8", "--image_size=32"]
  if frames:
    shape += [f"--num_frames={frames}", "--tubelet=2", "--mask_ratio=0.9"]
  args = bench.parse_args(shape)
  c = bench.make_config(args, "tiny/8", "float32", "xla", "none")
  c.model.update(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                 decoder_num_heads=4)
  return c


@pytest.mark.slow
@pytest.mark.parametrize("frames", [0, 4], ids=["images", "clips"])
def test_plain_jax_step_computes_the_projects_math(frames):
  """The plain step of ``plain_jax.py`` against the project's model and optimizer: with
  the same parameters and the same masking noise, the same loss and gradients, and the
  same AdamW update of those gradients (so its ratio compares the same work)."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  from mae_jax.models import registry
  from mae_jax.train import optim
  from mae_jax.train.step import init_rngs
  plain = _load("plain_jax")
  c = _tiny_mae(frames)
  model = registry.build_mae(c)
  images = jax.random.normal(jax.random.key(3), registry.input_shape(c, 4))
  params = nn.unbox(model.init(init_rngs(0), images)["params"])
  spec = plain.plain_spec(model, registry.patch_grid(c))
  assert spec["tube"] == bool(frames) and spec["cls"] == (not frames)
  noise = plain.plain_noise(jax.random.key(5), spec, 4)
  theirs, grads = jax.value_and_grad(
      lambda p: model.apply({"params": p}, images, noise=noise)[0])(params)
  ours, plain_grads = jax.value_and_grad(plain.plain_loss)(plain.plain_params(params), images,
                                                            noise, spec)
  assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
  mapped = plain.plain_params(grads)
  assert jax.tree.structure(mapped) == jax.tree.structure(plain_grads)
  for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # one AdamW update of the same gradients, at an lr that moves the parameters, from
  # parameters with no zeros (so weight decay on a bias would show)
  lr = 1e-2
  leaves, treedef = jax.tree.flatten(params)
  moved = jax.tree.unflatten(treedef, [a + 0.1 * jax.random.normal(jax.random.key(i), a.shape)
                                       for i, a in enumerate(leaves)])
  tx = optim.adamw(c.optim, lambda step: lr)
  updates, _ = tx.update(grads, tx.init(moved), moved)
  ptx = plain.plain_adamw(lambda step: lr)
  p0 = plain.plain_params(moved)
  plain_updates, _ = ptx.update(plain.plain_params(grads), ptx.init(p0), p0)
  for a, b in zip(jax.tree.leaves(plain.plain_params(updates)), jax.tree.leaves(plain_updates)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  p0 = plain.plain_params(params)
  # the masking noise matters: another draw gives another loss
  other = plain.plain_loss(plain.plain_params(params), images,
                           plain.plain_noise(jax.random.key(6), spec, 4), spec)
  assert abs(float(other) - float(ours)) > 1e-4
  # and the jitted plain step runs, the loss of its first step from fold_in(key, 0)
  state = (p0, ptx.init(p0), jnp.zeros((), jnp.int32))
  step = plain.make_plain_step(spec, ptx, jax.random.key(2))
  _, loss = step(state, images)
  first = plain.plain_loss(plain.plain_params(params), images, plain.plain_noise(
      jax.random.fold_in(jax.random.key(2), 0), spec, 4), spec)
  assert float(loss) == pytest.approx(float(first), rel=1e-5)


PEERS = ("hf_vitmae", "hf_videomae", "official_mae", "official_mae_compile")


@pytest.mark.slow
def test_device_suite_smoke_runs_every_part_on_a_bare_jax_install(tmp_path):
  """``device_suite.py --smoke``: every part, the science one included, in one process
  with ml_collections / TFDS / TensorFlow / grain unimportable (as on the accelerator
  image); one results file whose rows all say where and with what they were measured."""
  code = ("import sys, runpy\n"
          + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
          + "sys.argv[0] = 'device_suite.py'\n"
          + "runpy.run_path('benchmarks/device_suite.py', run_name='__main__')\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code, "--smoke", f"--out_dir={tmp_path}"],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)  # a hang guard only
  assert proc.returncode == 0, proc.stderr[-4000:]
  suite = _load("device_suite")
  (out,) = list(tmp_path.glob("*.jsonl"))
  assert out.name.startswith("cpu_")
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert rows == [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')
                  and '"suite"' in line]
  parts = [name for name, _ in suite.PARTS] + ["science"]
  assert [p for p in dict.fromkeys(r["part"] for r in rows)] == parts
  torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "timm", "transformers"))
  for row in rows:
    assert row["suite"] == "smoke" and row["device"] == "cpu" and "commit" in row
    assert "driver" in row and row["versions"]["jax"] and row["versions"]["python"]
    assert "error" not in row or (row.get("impl") in PEERS and not torch_ok), row
  by = lambda part, **kw: [r for r in rows if r["part"] == part
                           and all(r.get(k) == v for k, v in kw.items())]
  for part in ("images_b16", "images_l16", "video"):
    for ours in by(part, impl="mae_jax"):
      assert ours["img_per_s"] > 0 and ours["dims"] and ours["peak_mem_gib"] > 0
      if torch_ok:
        assert ours["ratio_vs_hf"] > 0
  assert [r["scan_layers"] for r in by("images_l16", impl="mae_jax")] == [True, False]
  if torch_ok:
    assert {r["impl"] for r in by("images_b16")} == {"mae_jax", "hf_vitmae", "official_mae"}
    # the second call of images_l16 has no HF row of its own: the part's first one counts
    hf, scan, plain = by("images_l16", impl="hf_vitmae") + by("images_l16", impl="mae_jax")
    assert plain["ratio_vs_hf"] == pytest.approx(plain["img_per_s"] / hf["img_per_s"])
    assert "another call" in plain["ratio_vs_hf_note"] and "ratio_vs_hf_note" not in scan
    assert [(r["impl"], r["model"]) for r in by("torch_compile")] == [
        ("hf_vitmae", "vit-tiny/4"), ("official_mae_compile", "vit-tiny/4"),
        ("hf_vitmae", "vit-tiny/7"), ("official_mae_compile", "vit-tiny/7")]
    assert all(r["ratio_vs_hf"] > 0 for r in by("torch_compile", impl="official_mae_compile"))
    assert by("video", impl="hf_videomae")[0]["num_frames"] == 4
  (cache,) = by("compile_cache")
  assert cache["cache_entries"] > 0 and cache["compile_warm_s"] > 0
  assert cache["compile_cold_s"] == by("images_b16", impl="mae_jax")[0]["compile_s"]
  dry, real = by("vit_h_fit")
  assert (dry["check"], dry["fits"], real["check"], real["fits"]) == (
      "dry_run", None, "allocated", True)   # the CPU has no memory limit to check against
  assert dry["remat"] == real["remat"] == "full" and dry["peak_gib"] > 0
  assert {r["path"]: r.get("skipped", "")[:13] for r in by("input_pipeline")} == {
      "grain": "not installed", "grain_fast": "not installed", "pil_numpy": ""}
  assert by("input_pipeline", path="pil_numpy")[0]["img_per_s"] > 0
  ours, plain = by("plain_jax")
  assert (ours["impl"], plain["impl"]) == ("mae_jax", "plain_jax") and ours["ratio_vs_plain"] > 0
  science = {(r["what"], r.get("init"), r.get("seed")): r for r in by("science")}
  assert set(science) == {("pretrain", None, None), ("raw_pixels_logreg", None, None),
                          ("summary", None, None), ("finetune", "mae", 0),
                          ("finetune", "mae", 1), ("finetune", "scratch", 0),
                          ("finetune", "scratch", 1)}
  summary = science[("summary", None, None)]
  assert summary["mae_mean"] == pytest.approx(
      np.mean([science[("finetune", "mae", s)]["top1"] for s in (0, 1)]))
  assert summary["verdict"] and 0.1 < summary["raw_pixels_top1"] <= 1.0


def test_device_suite_runner_stops_a_part_that_fails_or_hangs():
  """Isolated parts: a crash and a hang each become one line; the runner goes on."""
  suite = _load("device_suite")
  assert suite.run_isolated([sys.executable, "-c", "pass"], 60) is None
  failed = suite.run_isolated([sys.executable, "-c", "raise SystemExit('no GPU here')"], 60)
  assert failed == "exit status 1: no GPU here"
  assert suite.run_isolated([sys.executable, "-c", "import time; time.sleep(60)"],
                            1) == "timeout: stopped after 1 s"
  assert suite.slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"


def test_science_crop_with_the_whole_image_is_the_image_or_its_mirror():
  import jax
  import jax.numpy as jnp
  science = _load("fmnist_science")
  images = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))
  out = science.random_resized_crop(jax.random.key(1), images, (1.0, 1.0), ratio=(1.0, 1.0))
  same = jnp.all(jnp.abs(out - images) < 1e-5, axis=(1, 2, 3))
  mirrored = jnp.all(jnp.abs(out - images[:, :, ::-1]) < 1e-5, axis=(1, 2, 3))
  assert bool(jnp.all(same | mirrored)) and 0 < int(same.sum()) < 16


def test_device_suite_wrapper_passes_its_arguments_on():
  proc = subprocess.run([os.path.join(BENCH, "device_suite.sh"), "--help"], capture_output=True,
                        text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "--smoke" in proc.stdout and "--science" in proc.stdout


def test_readme_performance_tables_are_what_the_results_render():
  """The README's tables come from ``benchmarks/results/`` (``python benchmarks/tables.py``
  rewrites them); a typed number or a results file changed without re-rendering fails."""
  tables = _load("tables")
  with open(tables.README) as f:
    text = f.read()
  names = [m.group(2) for m in tables.REGION.finditer(text)]
  assert sorted(names) == sorted(tables.TABLES)
  assert tables.render_file(text, tables.load()) == text, (
      "README tables are stale: run python benchmarks/tables.py")


def _suite_rows(device="NVIDIA H200", date="2026-12-01", b16=6400.0):
  common = dict(suite="full", date=date, driver="570.1", commit="abcdef0123",
                versions={"jax": "0.11.2", "torch": "2.9"}, backend="gpu", device=device)
  return [dict(common, part="env", impl="environment"),
          dict(common, part="images_b16", impl="hf_vitmae", model="vit-base/16",
               attention="sdpa", img_per_s=3459.0, mfu=0.205, peak_mem_gib=30.0,
               first_step_s=3.0),
          dict(common, part="images_b16", impl="mae_jax", model="vit-base/16",
               attention="cudnn", scan_layers=False, img_per_s=b16, mfu=b16 * 58.69e9 / 989e12,
               peak_mem_gib=21.5, compile_s=40.0, ratio_vs_hf=b16 / 3459.0),
          dict(common, part="images_l16", impl="mae_jax", model="vit-large/16",
               attention="cudnn", error="XlaRuntimeError: RESOURCE_EXHAUSTED"),
          dict(common, part="compile_cache", impl="mae_jax", model="vit-base/16",
               attention="cudnn", compile_cold_s=40.0, compile_warm_s=4.0, warm_speedup=10.0),
          dict(common, part="vit_h_fit", impl="mae_jax", model="vit-huge/14", batch=256,
               remat="full", check="dry_run", fits=True, peak_gib=60.25),
          dict(common, part="input_pipeline", impl="input_pipeline", path="grain",
               skipped="not installed"),
          dict(common, part="video", error="timeout: stopped after 60 s")]


def test_gpu_table_renders_the_latest_suite_run_and_says_when_there_is_none(tmp_path):
  tables = _load("tables")
  assert "No GPU measurement" in tables.gpu_suite([])
  for name, rows in (("nvidia_h200_2026-12-01.jsonl", _suite_rows()),
                     ("nvidia_h200_2026-12-03.jsonl", _suite_rows(date="2026-12-03", b16=7000.0)),
                     ("cpu_2026-12-05.jsonl", [dict(r, backend="cpu", suite="smoke")
                                               for r in _suite_rows(date="2026-12-05")])):
    (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
  text = tables.gpu_suite(tables.load(str(tmp_path)))
  assert "Measured 2026-12-03 on one NVIDIA H200" in text and "`abcdef0`" in text
  assert "| vit-base/16 | mae_jax | cudnn | off | 7,000 | 41.5% | 21.5 | 40.0 | 2.02x |" in text
  assert "| vit-base/16 | Hugging Face ViTMAE (sdpa) | sdpa | - | 3,459 | 20.5% |" in text
  assert "| vit-large/16 | mae_jax | cudnn | - | error: XlaRuntimeError: RESOURCE_EXHAUSTED" in text
  assert "40.0 s cold, 4.0 s from the persistent cache in a fresh process (10.0x)" in text
  assert "vit-huge/14, batch 256, remat=full, XLA's estimate from shapes: fits (60.2 GiB)" in text
  assert "`grain`: skipped (not installed)" in text
  assert "Part `video` failed: timeout: stopped after 60 s" in text


def test_plain_jax_table_reads_both_rows_of_a_run(tmp_path):
  tables = _load("tables")
  base = dict(case="clips", model="vit-small/16", num_frames=16, image_size=112, tubelet_size=2,
              masking="tube", mask_ratio=0.9, batch=2, device="cpu", cpu_cores=1, steps=2,
              repeats=3, load_avg_1m=2.5)
  rows = [dict(base, impl="mae_jax", img_per_s=0.9, ratio_vs_plain=0.9 / 0.8,
               ratio_vs_plain_cpu_time=1.02),
          dict(base, impl="plain_jax", img_per_s=0.8)]
  (tmp_path / "plain_jax_cpu_2026-12-06.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  text = tables.plain_jax(tables.load(str(tmp_path)))
  assert ("| clips | vit-small/16, 16x112x112, tubelet 2, tube masking 0.9 | 2 | cpu, 1 pinned "
          "core | 0.90 clips/s | 0.80 clips/s | **1.12x** | 1.02x | 2.5 |") in text
  assert "3 windows of 2 steps" in text and "`results/plain_jax_cpu_2026-12-06.jsonl`" in text


def test_objectives_report_means_stds_and_differences(tmp_path):
  """``benchmarks/objectives.py``'s summary: mean and sample std over seeds in %, the
  differences to plain pixels, and a reduced run says it is one."""
  bench = _load("objectives")
  rows = [dict(arm=arm, seed=s, linear_probe_top1=0.80 + 0.01 * i + 0.002 * s,
               knn_top1=0.5 + 0.02 * i, finetune_top1=0.3)
          for i, arm in enumerate(bench.ARMS) for s in range(3)]
  summary = bench.summarise(rows)
  probe = summary["hog"]["linear_probe_top1"]
  np.testing.assert_allclose(probe["values"], [82.0, 82.2, 82.4])
  np.testing.assert_allclose([probe["mean"], probe["std"]], [82.2, 0.2])
  args = dict(budget=25.0, ft_steps=30, ft_eval=1000, probe_train=2000, probe_test=1000,
              seeds=[0, 1, 2])
  report = dict(summary=summary, args=args, date="2026-01-02", hardware="a CPU",
                total_minutes=40, command="python benchmarks/objectives.py --budget=25",
                seconds_per_step={a: 0.25 for a in bench.ARMS}, steps={a: 100 for a in bench.ARMS})
  md = bench.markdown(report)
  assert "| hog | 0.250 | 100 | 82.2 ± 0.2 | 54.0 ± 0.0 | 30.0 ± 0.0 |" in md
  assert ("* hog: linear probe +2.0 (clear), knn +4.0 (clear), finetune +0.0 (within noise)"
          in md)
  assert "A reduced protocol" in md and bench.FULL_COMMAND in md
  assert "A reduced protocol" not in bench.markdown(
      dict(report, args=dict(args, budget=310.0, ft_steps=600, probe_train=10000)))
