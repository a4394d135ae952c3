"""`mae-jax import --format=videomae`: a random Hugging Face VideoMAEForPreTraining saved
by transformers, imported, computes HF's predictions and loss; exported again it is
the same tensors; what our model cannot express is refused in one line; pretraining
continues from the imported workdir."""
import json
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mae_jax  # noqa: E402
from conftest import load_config, run_cli, training_rows  # noqa: E402
from test_video import assert_matches_videomae  # noqa: E402
from mae_jax import export  # noqa: E402
from mae_jax.errors import CheckpointError  # noqa: E402
from mae_jax.export import names  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FRAMES, SIZE, PATCH, TUBELET = 4, 32, 8, 2
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=64)


def hf_config(channels=3, **overrides):
  kw = dict(TINY, image_size=SIZE, patch_size=PATCH, num_channels=channels,
            num_frames=FRAMES, tubelet_size=TUBELET, use_mean_pooling=False,
            norm_pix_loss=True, layer_norm_eps=1e-6)
  kw.update(overrides)
  return transformers.VideoMAEConfig(**kw)


def save_random_videomae(path, config, seed=0):
  """A VideoMAEForPreTraining with every tensor random (biases and norms included),
  written by ``save_pretrained``."""
  torch.manual_seed(seed)
  model = transformers.VideoMAEForPreTraining(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_scale = name.endswith(".weight") and "norm" in name.split(".")[-2]
      p.copy_(0.05 * torch.randn_like(p) + (1.0 if is_scale else 0.0))
  model.save_pretrained(str(path))
  return model.eval()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp("videomae")
  hf = save_random_videomae(root / "hf", hf_config())
  proc = run_cli("import", f"--in={root / 'hf'}", "--format=videomae",
                 f"--workdir={root / 'w'}", check=True)
  return root, hf, proc


def test_imported_model_predicts_what_hf_predicts(imported):
  root, hf, proc = imported
  assert "tubelet 2, 4 frames of 32x32, imported decoder" in proc.stdout + proc.stderr
  loaded = mae_jax.load(str(root / "w"))
  m = loaded.config.model
  assert loaded.step == 0 and loaded.config.data.video.num_frames == FRAMES
  assert (m.tubelet_size, m.patch_size, m.use_cls_token, m.pos_table, m.decoder_embed_bias,
          m.norm_pix_per_channel, m.decoder_norm_eps) == (
              TUBELET, PATCH, False, "sinusoid_1d", False, True, 1e-5)
  assert (m.embed_dim, m.depth, m.num_heads, m.decoder_embed_dim, m.decoder_depth,
          m.decoder_num_heads, m.mlp_ratio) == (32, 2, 2, 16, 1, 2, 4.0)
  assert m.masking == "tube" and m.mask_ratio == 0.9   # VideoMAE's recipe

  assert_matches_videomae(loaded.model, loaded.params, hf, "imported videomae",
                          frames=FRAMES, size=SIZE)


def test_export_of_the_import_is_the_same_tensors(imported, tmp_path):
  root, hf, _ = imported
  run_cli("export", f"--workdir={root / 'w'}", "--format=videomae", f"--out={tmp_path / 'e'}",
          check=True)
  theirs, _, _ = export.load_file(str(root / "hf"), "videomae")
  ours, meta, _ = export.load_file(str(tmp_path / "e"), "videomae")
  theirs, ours = names.canonical_keys("videomae", theirs), names.canonical_keys("videomae", ours)
  assert sorted(ours) == sorted(theirs)
  for key in theirs:
    assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
    assert ours[key].tobytes() == theirs[key].tobytes(), key
  original = json.loads((root / "hf" / "config.json").read_text())
  for key in ("num_frames", "tubelet_size", "image_size", "patch_size", "hidden_size",
              "decoder_hidden_size", "num_attention_heads", "decoder_num_attention_heads",
              "intermediate_size", "use_mean_pooling", "norm_pix_loss"):
    assert meta[key] == original[key], key
  again = transformers.VideoMAEForPreTraining.from_pretrained(str(tmp_path / "e")).state_dict()
  for key, value in hf.state_dict().items():
    assert torch.equal(again[key], value), key


def test_encoder_only_videomae_model_gets_a_fresh_decoder(tmp_path):
  torch.manual_seed(0)
  encoder = transformers.VideoMAEModel(hf_config())
  encoder.save_pretrained(str(tmp_path / "enc"))
  out = export.import_file(str(tmp_path / "enc"), "videomae")
  assert not out.has_decoder and any("freshly initialised" in n for n in out.notices)
  sd = encoder.state_dict()
  np.testing.assert_array_equal(
      out.params["patch_embed"]["proj"]["kernel"],
      sd["embeddings.patch_embeddings.projection.weight"].numpy().transpose(2, 3, 4, 1, 0))
  np.testing.assert_array_equal(out.params["blocks_1"]["attn"]["qkv"]["bias"][1], 0.0)


@pytest.mark.parametrize("overrides,expect", [
    (dict(use_mean_pooling=True), "use_mean_pooling=True"),
    (dict(qv_bias=False), "qv_bias=False"),
    (dict(hidden_act="gelu_new"), "hidden_act='gelu_new'"),
    (dict(norm_pix_loss=False), "norm_pix_loss=False"),
    (dict(decoder_intermediate_size=32), "MLP ratio"),
])
def test_import_refuses_what_our_model_cannot_express(tmp_path, overrides, expect):
  save_random_videomae(tmp_path, hf_config(**overrides))
  with pytest.raises(CheckpointError, match=expect):
    export.import_file(str(tmp_path), "videomae")


def test_bad_inputs_give_one_error_line(imported, tmp_path):
  root = imported[0]
  vitmae = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
      decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
      decoder_intermediate_size=32, image_size=16, patch_size=8))
  vitmae.save_pretrained(str(tmp_path / "vitmae"))
  (tmp_path / "empty").mkdir()
  weights_only = tmp_path / "weights_only"
  weights_only.mkdir()
  os.symlink(root / "hf" / "model.safetensors", weights_only / "model.safetensors")
  cases = [
      (tmp_path / "vitmae", "videomae", r"model_type='vit_mae'.*--format=hf"),
      (tmp_path / "empty", "videomae", "not a Hugging Face model directory"),
      (weights_only, "videomae", "no config.json"),
      (root / "hf", "hf", "pass --format=videomae"),
  ]
  for path, fmt, expect in cases:
    proc = run_cli("import", f"--in={path}", f"--format={fmt}",
                   f"--workdir={tmp_path / 'new'}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and re.search(expect, errors[0]), proc.stderr[-2000:]
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_pretraining_continues_from_an_imported_workdir(tmp_path, fmnist_available):
  save_random_videomae(tmp_path / "hf", hf_config(channels=1))
  run_cli("import", f"--in={tmp_path / 'hf'}", "--format=videomae",
          f"--workdir={tmp_path / 'w'}", check=True)
  before = mae_jax.load(str(tmp_path / "w"))
  from mae_jax.train import pretrain
  c = load_config("pretrain_video_fmnist", "steps=2,hf_layout")
  c.model.update(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                 decoder_num_heads=2, norm_pix_loss=True)
  c.data.video.num_frames = FRAMES
  c.data.image_size = SIZE
  c.batch_size = 4
  c.log_every_steps, c.eval_every_steps = 1, 1000
  c.probe.enabled = False
  pretrain.train_and_evaluate(c, str(tmp_path / "w"))
  rows = training_rows(tmp_path / "w")
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  after = mae_jax.load(str(tmp_path / "w"))
  assert after.step == 2
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       before.params, after.params)
  assert 0 < max(jax.tree.leaves(moved)) < 1.0   # trained a little from the imported weights
