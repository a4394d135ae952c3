"""Fine-tuned and probed classifiers to and from PyTorch: the official models_vit
(transcribed below), timm's local-dir folders, Hugging Face ViTForImageClassification."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import timm  # noqa: E402

from conftest import load_config, run_cli  # noqa: E402
from mae_jax.export import classifier as export_classifier  # noqa: E402
from mae_jax.train import classifier  # noqa: E402

DIMS = dict(embed_dim=32, depth=2, num_heads=2, patch_size=7)


class OfficialViT(timm.models.vision_transformer.VisionTransformer):
  """facebookresearch/mae models_vit.VisionTransformer, transcribed (global_pool: mean
  of the patch tokens + fc_norm, the original norm deleted; else norm + cls token)."""

  def __init__(self, global_pool=False, **kwargs):
    super().__init__(global_pool="token", fc_norm=False, **kwargs)
    self.official_global_pool = global_pool
    if global_pool:
      self.fc_norm = torch.nn.LayerNorm(kwargs["embed_dim"], eps=1e-6)
      del self.norm

  def forward(self, x):
    x = self.patch_embed(x)
    x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
    for blk in self.blocks:
      x = blk(x)
    if self.official_global_pool:
      outcome = self.fc_norm(x[:, 1:, :].mean(dim=1))
    else:
      outcome = self.norm(x)[:, 0]
    return self.head(outcome)


def official_classifier(meta):
  kw = dict(meta["kwargs"])
  model = OfficialViT(**kw, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
  if meta["linear_probe_head"]:  # main_linprobe.py
    model.head = torch.nn.Sequential(
        torch.nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
  return model.eval()


def make_config(task):
  config = load_config(f"{task}_fmnist")
  config.model.update(**DIMS)
  return config


def random_classifier(task, seed=0):
  """A classifier with random weights everywhere (head and BatchNorm stats too)."""
  config = make_config(task)
  model = classifier.build_classifier(config)
  import flax.linen as nn
  variables = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1))))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: np.asarray(a) + rng.normal(0, 0.05, a.shape).astype(
      np.float32), variables["params"])
  stats = {}
  if "batch_stats" in variables:
    stats = {"head_norm": {"mean": rng.normal(0, 0.5, 32).astype(np.float32),
                           "var": rng.uniform(0.2, 2.0, 32).astype(np.float32)}}
  return config, model, params, stats


def images(n=4, seed=1):
  return np.random.default_rng(seed).normal(size=(n, 28, 28, 1)).astype(np.float32)


def ours(model, params, stats, x):
  variables = {"params": params, **({"batch_stats": stats} if stats else {})}
  return np.asarray(model.apply(variables, jnp.asarray(x), train=False))


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def report(what, got, want):
  diff = float(np.abs(got - want).max())
  print(f"{what}: max |diff| {diff:.2e}")
  assert diff < 2e-5, (what, diff)


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_official_export_loads_strictly_and_matches(task, tmp_path):
  config, model, params, stats = random_classifier(task)
  out = str(tmp_path / "ft.pth")
  export_classifier.save(params, stats, config, "official", out)
  with open(tmp_path / "ft.json") as f:
    meta = json.load(f)
  assert meta["kwargs"]["global_pool"] == (task == "finetune")
  torch_model = official_classifier(meta)
  state = torch.load(out, weights_only=True)["model"]
  torch_model.load_state_dict(state, strict=True)
  x = images()
  with torch.no_grad():
    report(f"official {task} logits", torch_model(nchw(x)).numpy(),
           ours(model, params, stats, x))


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_timm_local_dir_loads_natively_and_matches(task, tmp_path):
  config, model, params, stats = random_classifier(task)
  out = str(tmp_path / "timm_model")
  export_classifier.save(params, stats, config, "timm", out)
  torch_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
  cfg = torch_model.pretrained_cfg
  assert tuple(cfg["input_size"]) == (1, 28, 28) and cfg["num_classes"] == 10
  np.testing.assert_allclose(cfg["mean"], [0.2860], atol=1e-4)
  np.testing.assert_allclose(cfg["std"], [0.3530], atol=1e-4)
  x = images()
  with torch.no_grad():  # the probe's BatchNorm is folded into timm's head
    report(f"timm {task} logits", torch_model(nchw(x)).numpy(),
           ours(model, params, stats, x))


def test_hf_probe_export_matches_and_its_processor_is_the_eval_transform(tmp_path):
  transformers = pytest.importorskip("transformers")
  from PIL import Image
  from mae_jax.data import augment
  config, model, params, stats = random_classifier("linprobe")
  out = str(tmp_path / "hf")
  export_classifier.save(params, stats, config, "hf", out)
  hf = transformers.ViTForImageClassification.from_pretrained(out).eval()
  x = images()
  with torch.no_grad():
    report("hf probe logits", hf(pixel_values=nchw(x)).logits.numpy(),
           ours(model, params, stats, x))
  processor = transformers.AutoImageProcessor.from_pretrained(out)
  assert processor.size == {"height": 28, "width": 28}
  np.testing.assert_allclose(processor.image_mean, [0.2860], atol=1e-4)
  picture = np.random.default_rng(3).integers(0, 256, (28, 28, 1), np.uint8)
  got = processor(Image.fromarray(picture[..., 0]), return_tensors="np")["pixel_values"][0]
  want = augment.normalize(augment.center_crop(picture, 28), (0.2860,), (0.3530,))
  diff = float(np.abs(got.transpose(1, 2, 0) - want).max())
  print(f"AutoImageProcessor vs our eval transform (28x28 image): max |diff| {diff:.2e}")
  assert diff < 1e-3


def test_hf_refuses_a_mean_pooled_model(tmp_path):
  config, _, params, stats = random_classifier("finetune")
  with pytest.raises(Exception, match="no Hugging Face class"):
    export_classifier.save(params, stats, config, "hf", str(tmp_path / "hf"))


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_official_round_trip_through_a_workdir_is_bit_exact(task, tmp_path,
                                                            fmnist_available):
  """export -> mae-jax import -> a classifier workdir that mae-jax evaluate reads."""
  config, model, params, stats = random_classifier(task)
  out = str(tmp_path / "ft.pth")
  export_classifier.save(params, stats, config, "official", out)
  workdir = tmp_path / "imported"
  run_cli("import", f"--in={out}", "--format=official", f"--workdir={workdir}", check=True)
  from mae_jax import checkpoint_io
  parts, step = checkpoint_io.restore_parts(str(workdir), None,
                                         jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                                         ("params", "batch_stats"))
  assert step == 0
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               parts["params"], params)
  if stats:
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 parts["batch_stats"], stats)
  flags = [f"--config.model.{k}={v}" for k, v in DIMS.items()]
  proc = run_cli("evaluate", f"--config=configs/{task}_fmnist.py", f"--workdir={workdir}",
                 *flags, "--config.data.eval_max_examples=200", check=True)
  with open(workdir / "eval.json") as f:
    result = json.load(f)
  assert result["num_examples"] == 200 and result["step"] == 0
  # the numbers are the exported model's: evaluate it here on the same images
  from mae_jax.data import pipeline
  x, y = pipeline.eval_arrays(config.data, "test", 200)
  top1 = float((ours(model, params, stats, x).argmax(-1) == y).mean())
  assert result["top1"] == pytest.approx(top1), proc.stdout[-500:]


def test_pretrained_encoder_folders_load_natively_and_read_back(tmp_path):
  """MAE pretraining exports: a timm local-dir folder (no head) and an HF folder with
  preprocessor_config.json; the timm folder imports back bit for bit."""
  transformers = pytest.importorskip("transformers")
  from mae_jax import export
  from mae_jax.models import registry
  config = load_config("pretrain_fmnist")
  config.model.update(**DIMS, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
  import flax.linen as nn
  model = registry.build_mae(config)
  params = nn.unbox(model.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                               jnp.zeros((1, 28, 28, 1)))["params"])
  folder = str(tmp_path / "timm_encoder")
  export.save(params, config, "timm", folder)
  assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
  encoder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
  assert encoder.num_classes == 0 and tuple(encoder.pretrained_cfg["input_size"]) == (1, 28, 28)
  x = images()
  with torch.no_grad():
    theirs = encoder.forward_features(nchw(x)).numpy()
  want = np.asarray(model.apply({"params": params}, jnp.asarray(x), method=model.features))
  report("timm local-dir encoder features", theirs, want)
  back = export.import_file(folder, "timm")
  encoder_keys = [k for k in params if not k.startswith(("decoder", "mask_token"))]
  for k in encoder_keys:
    jax.tree.map(np.testing.assert_array_equal, back.params[k], params[k])
  hf_dir = str(tmp_path / "hf_mae")
  export.save(params, config, "hf", hf_dir)
  processor = transformers.AutoImageProcessor.from_pretrained(hf_dir)
  assert processor.size == {"height": 28, "width": 28}
  np.testing.assert_allclose(processor.image_std, [0.3530], atol=1e-4)
  transformers.ViTMAEForPreTraining.from_pretrained(hf_dir)  # the config still loads
