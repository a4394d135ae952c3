"""Benchmarks: the FLOP formula against the design numbers, and a CPU smoke run of the
throughput benchmark with ml_collections / TFDS / TensorFlow / grain unimportable
(as on the accelerator image)."""
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
