"""The video MAE: parity with Hugging Face VideoMAE, tube masking in the model, and a
short end-to-end pretraining on moving Fashion-MNIST with its probe."""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import training_rows  # noqa: E402
from mae_jax import config_lib, config_schema, export  # noqa: E402
from mae_jax.errors import CheckpointError, ConfigError  # noqa: E402
from mae_jax.models import registry  # noqa: E402

FRAMES, SIZE, CHANNELS, PATCH, TUBELET = 4, 16, 3, 8, 2


def video_config(hf_layout=True, **model):
  c = config_lib.pretrain_defaults("tiny/8")
  config_lib.video_defaults(c, tubelet_size=TUBELET, num_frames=FRAMES)
  if hf_layout:
    config_lib.videomae_layout(c)
  c.model.update({**dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True,
                         mask_ratio=0.5), **model})
  c.data.update(image_size=SIZE, channels=CHANNELS)
  return c


def random_params(config, seed=0):
  """Random values in our tree's shapes: every bias and norm parameter non-trivial."""
  model = registry.build_mae(config)
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)},
      jnp.zeros(registry.input_shape(config))))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    value = 0.05 * rng.standard_normal(leaf.shape).astype(np.float32)
    return value + 1.0 if path[-1].key == "scale" else value
  paths = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return jax.tree.unflatten(jax.tree.structure(shapes), [draw(p, leaf) for p, leaf in paths])


def test_videomae_parity(tmp_path):
  from transformers import VideoMAEForPreTraining
  config = video_config()
  params = random_params(config)
  export.save(params, config, "videomae", str(tmp_path / "videomae"))
  meta = json.loads((tmp_path / "videomae" / "config.json").read_text())
  assert meta["num_frames"] == FRAMES and meta["tubelet_size"] == TUBELET
  hf, info = VideoMAEForPreTraining.from_pretrained(str(tmp_path / "videomae"),
                                                    output_loading_info=True)
  assert not any(info.values()), info
  assert_matches_videomae(registry.build_mae(config), params, hf.eval(), "videomae")


def assert_matches_videomae(model, params, hf, label, frames=FRAMES, size=SIZE):
  """Our prediction and loss against ``VideoMAEForPreTraining`` ``hf`` on random RGB
  clips, HF given the ``bool_masked_pos`` our model drew from the same noise."""
  import torch
  rng = np.random.default_rng(1)
  clips = rng.standard_normal((2, frames, size, size, CHANNELS)).astype(np.float32)
  num_patches = (frames // TUBELET) * (size // PATCH) ** 2
  noise = rng.random((2, num_patches)).astype(np.float32)
  loss, pred, mask = jax.jit(lambda p, x, n: model.apply({"params": p}, x, noise=n))(
      params, clips, noise)
  pred, mask = np.asarray(pred), np.asarray(mask).astype(bool)
  pixel_values = torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 1, 4, 2, 3)))
  with torch.no_grad():
    out = hf(pixel_values=pixel_values, bool_masked_pos=torch.from_numpy(mask))
  # VideoMAE predicts the masked patches only, in index order.
  ours = pred[mask].reshape(2, -1, pred.shape[-1])
  pred_diff = float(np.abs(out.logits.numpy() - ours).max())
  loss_diff = abs(float(out.loss) - float(loss))
  print(f"{label}: max |pred diff| {pred_diff:.3g}, |loss diff| {loss_diff:.3g} "
        f"(loss {float(loss):.4f})")
  assert pred_diff < 1e-5
  # VideoMAE normalises targets after un-normalising with the ImageNet statistics:
  # the same per-channel normalisation up to where its 1e-6 is added.
  assert loss_diff < 1e-4 * float(loss)


def test_export_refuses_what_videomae_cannot_express():
  for key, value in (("use_cls_token", True), ("pos_table", "sincos"),
                     ("decoder_embed_bias", True), ("decoder_norm_eps", 1e-6)):
    config = video_config(**{key: value})
    with pytest.raises(CheckpointError, match=f"model.{key}"):
      export.to_torch_state_dict(random_params(config), config, "videomae")
  image = config_lib.pretrain_defaults("tiny/4")
  image.data.update(image_size=16, channels=1)
  image_params = jax.tree.map(np.asarray, nn.unbox(registry.build_mae(image).init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)},
      jnp.zeros(registry.input_shape(image))))["params"])
  with pytest.raises(CheckpointError, match="video models"):
    export.to_torch_state_dict(image_params, image, "videomae")


def test_tube_masking_in_the_model():
  config = video_config(hf_layout=False, masking="tube", mask_ratio=0.75)
  config.data.update(image_size=32)
  model = registry.build_mae(config)
  clips = jnp.ones((3,) + registry.input_shape(config)[1:])
  variables = model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, clips)
  _, pred, mask = model.apply(variables, clips, rngs={"masking": jax.random.key(2)})
  mask = np.asarray(mask).reshape(3, FRAMES // TUBELET, 16)
  assert (mask == mask[:, :1]).all() and (mask.sum(-1) == 12).all()
  assert pred.shape == (3, 2 * 16, TUBELET * PATCH * PATCH * CHANNELS)


def test_video_config_errors_say_what_to_change():
  config = video_config(hf_layout=False)
  config.data.video.num_frames = 5
  with pytest.raises(ConfigError, match="tubelet_size"):
    config_schema.check(config)
  config = video_config(hf_layout=False, embed_dim=40, num_heads=2)
  with pytest.raises(ConfigError, match="divisible by 16"):
    config_schema.check(config)
  config = config_lib.pretrain_defaults("tiny/4")
  config.model.masking = "tube"
  config.data.image_size = 28
  with pytest.raises(ConfigError, match="video model"):
    registry.build_mae(config)


@pytest.mark.slow
def test_pretrain_moving_fmnist_end_to_end_and_resume(tmp_path, fmnist_available):
  """A short video pretraining: loss falls, reconstruction strips, the probe's three
  numbers, and a resumed run equals an uninterrupted one."""
  from conftest import load_config
  from mae_jax.train import pretrain

  def config(steps):
    c = load_config("pretrain_video_fmnist", f"steps={steps}")
    c.model.update(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                   decoder_depth=1, decoder_num_heads=2)
    c.data.video.num_frames = 4
    c.data.image_size = 32   # canvas: the 28x28 items move by up to 4 pixels
    c.batch_size = 16
    c.optim.update(base_lr=4e-3, warmup_steps=0, min_lr=4e-3 * 16 / 256)
    c.checkpoint.every_steps = 4
    c.log_every_steps, c.eval_every_steps = 1, 1000
    c.probe.update(max_train=200, max_test=100, steps=50)
    return c

  results = pretrain.train_and_evaluate(config(60), str(tmp_path / "full"))
  rows = training_rows(tmp_path / "full")
  losses = [r["loss"] for r in rows]
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
  assert os.path.exists(tmp_path / "full" / "recon" / "step_0000060.png")
  for key in ("linear_probe_top1", "random_init_probe_top1", "raw_pixels_probe_top1"):
    assert 0.0 <= results[key] <= 1.0, results
  pretrain.train_and_evaluate(config(4), str(tmp_path / "split"))
  pretrain.train_and_evaluate(config(60), str(tmp_path / "split"))
  split = training_rows(tmp_path / "split")
  np.testing.assert_array_equal([r["loss"] for r in split], losses)
