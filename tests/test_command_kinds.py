"""Every command on an image workdir and on a video workdir (MAE and classifier): it
either works or refuses in one ``error:`` line that says what to do instead; no
command meets a model of the other kind with a traceback."""
import json
import os

import pytest

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

MAE_DIMS = ["--config.model.embed_dim=32", "--config.model.depth=1",
            "--config.model.num_heads=2", "--config.model.decoder_embed_dim=32",
            "--config.model.decoder_depth=1", "--config.model.decoder_num_heads=2",
            "--config.batch_size=8", "--config.log_every_steps=1",
            "--config.eval_every_steps=0", "--config.num_recon_images=2",
            "--config.probe.enabled=False", "--config.monitor.every_steps=0"]
CLASSIFIER_DIMS = ["--config.model.embed_dim=32", "--config.model.depth=1",
                   "--config.model.num_heads=2", "--config.batch_size=8",
                   "--config.eval_batch_size=8", "--config.data.eval_max_examples=16",
                   "--config.log_every_steps=1"]
# each kind: its pretraining config, and its classifier configs
KINDS = {
    "image": dict(pretrain="configs/pretrain_fmnist.py:steps=2",
                  finetune="configs/finetune_fmnist.py:steps=2",
                  linprobe="configs/linprobe_fmnist.py:steps=2",
                  patch=["--config.model.patch_size=7"]),
    "video": dict(pretrain="configs/pretrain_video_fmnist.py:steps=2,hf_layout",
                  finetune="configs/finetune_video_fmnist.py:steps=2,hf_layout",
                  linprobe="configs/linprobe_video_fmnist.py:steps=2,hf_layout",
                  # (VideoMAE's loss without norm-pix is on ImageNet-normalised frames)
                  patch=[], mae=["--config.model.norm_pix_loss=True"]),
}
OTHER = {"image": "video", "video": "image"}


def one_error_line(proc, *expected: str) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-1500:], proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), lines
  for text in expected:
    assert text in lines[0], (text, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, fmnist_available):
  """{kind: {"mae": W, "finetune": W}}: a 2-step MAE and a 2-step fine-tuning of it."""
  root = tmp_path_factory.mktemp("kinds")
  out = {}
  for kind, k in KINDS.items():
    mae, ft = str(root / f"{kind}_mae"), str(root / f"{kind}_ft")
    run_cli("pretrain", f"--config={k['pretrain']}", f"--workdir={mae}", *MAE_DIMS,
            *k["patch"], *k.get("mae", []), check=True)
    run_cli("finetune", f"--config={k['finetune']}", f"--workdir={ft}", *CLASSIFIER_DIMS,
            *k["patch"], f"--config.init_from={mae}", check=True)
    out[kind] = dict(mae=mae, finetune=ft)
  return out


@pytest.mark.parametrize("kind", ["image", "video"])
def test_export_and_import(workdirs, kind, tmp_path):
  pytest.importorskip("torch")
  mae, ft = workdirs[kind]["mae"], workdirs[kind]["finetune"]
  works = {"image": ("official", "timm", "hf"), "video": ("videomae",)}[kind]
  for fmt in ("official", "timm", "hf", "videomae"):
    out = str(tmp_path / f"mae_{fmt}{'.pth' if fmt == 'official' else ''}")
    proc = run_cli("export", f"--workdir={mae}", f"--format={fmt}", f"--out={out}")
    if fmt in works:
      assert proc.returncode == 0, proc.stderr[-3000:]
      back = str(tmp_path / f"back_{fmt}")
      run_cli("import", f"--in={out}", f"--format={fmt}", f"--workdir={back}", check=True)
      with open(os.path.join(back, "config.json")) as f:
        assert bool(json.load(f)["model"].get("tubelet_size")) == (kind == "video")
    elif kind == "video":
      one_error_line(proc, "holds a video model", f"--format={fmt} takes image models",
                     "--format=videomae")
    else:
      one_error_line(proc, "--format=videomae exports video models", "--format=hf")
    # the classifier: images export to every classifier format, clips to none
    proc = run_cli("export", f"--workdir={ft}", f"--format={fmt}",
                   f"--out={tmp_path}/ft_{fmt}{'.pth' if fmt == 'official' else ''}")
    if kind == "image" and fmt in ("official", "timm"):
      assert proc.returncode == 0, proc.stderr[-3000:]
    elif fmt == "videomae":
      one_error_line(proc, "a pretraining model")
    elif kind == "video":
      one_error_line(proc, "video classifier", f"no {fmt} export", "mae-jax evaluate")
    else:  # hf takes probes only: a fine-tuned classifier says so
      assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("kind", ["image", "video"])
def test_visualize_and_analyze(workdirs, kind, tmp_path):
  mae = workdirs[kind]["mae"]
  run_cli("visualize", f"--workdir={mae}", f"--out={tmp_path}/grid.png", "--num_images=2",
          check=True)
  from PIL import Image
  rows = 2 * 4 if kind == "video" else 2  # a clip is four rows, frames in columns
  assert Image.open(tmp_path / "grid.png").size[1] > rows * 28
  picture = os.path.join(REPO, "benchmarks", "results", "paper_trends.png")
  proc = run_cli("visualize", f"--workdir={mae}", f"--out={tmp_path}/own.png",
                 f"--images={picture}")
  if kind == "image":
    assert proc.returncode == 0, proc.stderr[-3000:]
  else:
    one_error_line(proc, "holds a video model", "--images takes image models",
                   "Leave --images out")
    assert not (tmp_path / "own.png").exists()
  proc = run_cli("analyze", f"--workdir={mae}", f"--out={tmp_path}/analysis",
                 "--num_images=8", "--jacobian_images=1", "--num_train=32",
                 "--mask_ratios=0.75")
  if kind == "image":
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "analysis" / "report.md").exists()
  else:
    one_error_line(proc, "holds a video model", "mae-jax analyze takes image models")


@pytest.mark.parametrize("kind", ["image", "video"])
def test_evaluate_finetune_and_probe(workdirs, kind, tmp_path):
  k, other = KINDS[kind], KINDS[OTHER[kind]]
  mae, ft = workdirs[kind]["mae"], workdirs[kind]["finetune"]
  # evaluate: the workdir with its own config; with the other kind's; a pretraining workdir
  run_cli("evaluate", f"--config={k['finetune']}", f"--workdir={ft}", *CLASSIFIER_DIMS,
          *k["patch"], check=True)
  with open(os.path.join(ft, "eval.json")) as f:
    assert 0.0 <= json.load(f)["top1"] <= 1.0
  one_error_line(run_cli("evaluate", f"--config={other['finetune']}", f"--workdir={ft}",
                         *CLASSIFIER_DIMS, *other["patch"]),
                 f"holds {'a video' if kind == 'video' else 'an image'} model",
                 f"this --config takes {OTHER[kind]} models")
  one_error_line(run_cli("evaluate", f"--config={k['finetune']}", f"--workdir={mae}",
                         *CLASSIFIER_DIMS, *k["patch"]),
                 "is a pretraining workdir", f"--config.init_from={mae}")
  # a probe of this kind's MAE works; the other kind's classifier refuses it
  run_cli("linprobe", f"--config={k['linprobe']}", f"--workdir={tmp_path}/probe",
          *CLASSIFIER_DIMS, *k["patch"], f"--config.init_from={mae}", check=True)
  for task in ("finetune", "linprobe"):
    proc = run_cli(task, f"--config={other[task]}", f"--workdir={tmp_path}/{task}_other",
                   *CLASSIFIER_DIMS, *other["patch"], f"--config.init_from={mae}")
    one_error_line(proc, f"init_from={mae}",
                   "is a video model" if kind == "video" else "is an image model")
    assert not os.path.exists(f"{tmp_path}/{task}_other/config.json")
