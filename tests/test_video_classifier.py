"""Fine-tuning and linear probing on clips: the video MAE's encoder loads exactly into
the classifier, every frame of a clip gets the same crop and flip, clip batches mix
and erase frame by frame as images do, bad inputs say what to change, and a short
video pretrain -> linprobe -> finetune -> evaluate runs end to end."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config, run_cli
import mae_jax
from mae_jax import checkpoint_io
from mae_jax.data import augment, finetune_augment, pipeline
from mae_jax.errors import CheckpointError, ConfigError, UserError
from mae_jax.export import classifier as export_classifier
from mae_jax.models import load as load_lib
from mae_jax.models import registry
from mae_jax.models.pos_embed import fixed_table
from mae_jax.train import checkpoint as ckpt_lib
from mae_jax.train import classifier

FRAMES, SIZE, PATCH, TUBELET = 4, 32, 8, 2
DIMS = dict(embed_dim=64, depth=2, num_heads=2, patch_size=PATCH)


def video_mae_config(hf_layout=False, cls_token=False):
  c = load_config("pretrain_video_fmnist", "hf_layout" if hf_layout else None)
  c.model.update(**DIMS, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                 use_cls_token=cls_token)
  c.data.video.num_frames = FRAMES
  c.data.image_size = SIZE
  return c


def mae_workdir(path, config):
  """A pretraining workdir holding random MAE params: ``(workdir, mae, params)``."""
  mae = registry.build_mae(config)
  variables = jax.jit(mae.init)({"params": jax.random.key(1), "masking": jax.random.key(2)},
                                jnp.zeros(registry.input_shape(config)))
  params = nn.unbox(variables["params"])
  workdir = str(path)
  ckpt_lib.write_workdir(workdir, config, params, step=3)
  return workdir, mae, params


@pytest.fixture(scope="module")
def video_mae(tmp_path_factory, fmnist_available):
  """Two steps of video MAE pretraining on moving Fashion-MNIST: ``(workdir, config)``."""
  from mae_jax.train import pretrain
  c = load_config("pretrain_video_fmnist", "steps=2")
  c.model.update(**DIMS, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
  c.data.video.num_frames = FRAMES
  c.data.image_size = SIZE
  c.batch_size = 8
  c.probe.enabled = False
  c.checkpoint.async_save = False
  c.log_every_steps, c.eval_every_steps, c.num_recon_images = 1, 1000, 2
  workdir = str(tmp_path_factory.mktemp("video_mae"))
  pretrain.train_and_evaluate(c, workdir)
  return workdir, c


def classifier_config(task, **model):
  c = load_config(f"{task}_video_fmnist", f"num_frames={FRAMES}")
  c.model.update(**DIMS, **model)
  c.data.image_size = SIZE
  return c


def abstract_params(model, config):
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros(registry.input_shape(config)))
  return nn.unbox(variables["params"])


# ----------------------------------------------------------------- loading the encoder


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["pretrained", "sinusoid_1d_cls_token"])
def test_classifier_from_video_mae_has_its_encoder(tmp_path, request, layout):
  """Loaded, the classifier's encoder params are the MAE's leaf by leaf, its table the
  MAE's fixed table, and its features the MAE encoder's on the same unmasked clips.
  ``pretrained``: the MAE-ST layout (3-D sin-cos, no cls token) after two steps;
  the other: VideoMAE's 1-D table, with a cls token (random params)."""
  cls = layout != "pretrained"
  if cls:
    mae_config = video_mae_config(hf_layout=True, cls_token=True)
    workdir, mae, mae_params = mae_workdir(tmp_path / "mae", mae_config)
  else:
    workdir, mae_config = request.getfixturevalue("video_mae")
    mae = registry.build_mae(mae_config)
    mae_params = jax.device_get(mae_jax.load(workdir).params)
  clips = jnp.asarray(np.random.default_rng(0).normal(size=(3, FRAMES, SIZE, SIZE, 1)),
                      jnp.float32)
  tokens = jax.jit(lambda p, x: mae.apply({"params": p}, x, method=mae.features))(
      mae_params, clips)
  expected = {"mean": tokens[:, int(cls):].mean(axis=1), "cls": tokens[:, 0]}
  flat_mae = traverse_util.flatten_dict(mae_params, sep="/")
  grid = (FRAMES // TUBELET, SIZE // PATCH, SIZE // PATCH)
  table = fixed_table(mae_config.model.pos_table, 64, grid, cls)
  for task, pool in (("linprobe", "cls" if cls else "mean"), ("finetune", "avg")):
    config = classifier_config(task, use_cls_token=cls, pool=pool)
    model = classifier.build_classifier(config)
    params = abstract_params(model, config)
    tensors, report = load_lib.load_pretrained(workdir, params, model.grid)
    encoder = {"patch_embed", "blocks_0", "blocks_1", "pos_embed"} | ({"cls_token"} if cls
                                                                       else set())
    if pool != "avg":
      encoder.add("norm")
    assert {k.split("/")[0] for k in report["loaded"]} == encoder
    for name, value in tensors.items():
      if name != "pos_embed":
        np.testing.assert_array_equal(value, flat_mae[name])
    assert tensors["patch_embed/proj/kernel"].shape == (TUBELET, PATCH, PATCH, 1, 64)
    np.testing.assert_array_equal(tensors["pos_embed"][0], table)
    if pool == "avg":
      continue   # fc_norm is fresh: the features are not the MAE's
    placed = load_lib.place(tensors, jax.tree.map(jnp.zeros_like, params))
    ours = jax.jit(lambda p, x: model.apply({"params": p, "batch_stats": {}}, x,
                                            method=model.features))(placed, clips)
    np.testing.assert_allclose(ours, expected[pool], rtol=1e-5, atol=1e-5)


def test_mismatched_init_from_is_one_clear_error(tmp_path, video_mae):
  image_config = load_config("pretrain_fmnist")
  image_config.model.update({**DIMS, "patch_size": 7, "depth": 1}, decoder_embed_dim=32,
                            decoder_depth=1, decoder_num_heads=2)
  image_workdir, _, _ = mae_workdir(tmp_path / "image_mae", image_config)
  video_workdir = video_mae[0]

  video = classifier.build_classifier(classifier_config("linprobe"))
  with pytest.raises(CheckpointError, match="is an image model but the classifier takes "
                     "clips"):
    load_lib.load_pretrained(image_workdir, abstract_params(video, classifier_config(
        "linprobe")), video.grid)
  four = classifier_config("finetune")
  four.model.tubelet_size = 4
  model = classifier.build_classifier(four)
  with pytest.raises(CheckpointError, match="set --config.model.tubelet_size=2"):
    load_lib.load_pretrained(video_workdir, abstract_params(model, four), model.grid)
  with_cls = classifier_config("finetune", use_cls_token=True)
  model = classifier.build_classifier(with_cls)
  with pytest.raises(CheckpointError, match="has no cls token.*use_cls_token=false"):
    load_lib.load_pretrained(video_workdir, abstract_params(model, with_cls), model.grid)
  image = load_config("finetune_fmnist")
  image.model.update(**DIMS)
  image.data.image_size = 32
  model = classifier.build_classifier(image)
  with pytest.raises(CheckpointError, match="is a video model .*tubelet_size=2.* takes "
                     "images"):
    load_lib.load_pretrained(video_workdir, abstract_params(model, image), model.grid)

  with pytest.raises(UserError, match="video classifier .* has no timm export"):
    export_classifier.to_torch_state_dict({}, {}, classifier_config("finetune"), "timm")

  # config errors
  bad = classifier_config("finetune")
  bad.data.augment.rand_augment = "rand-m9-mstd0.5-inc1"
  with pytest.raises(ConfigError, match="rand_augment=none"):
    classifier.validate(bad)
  bad = classifier_config("linprobe", pool="cls")
  with pytest.raises(ConfigError, match="no cls token"):
    classifier.validate(bad)
  bad = classifier_config("linprobe")
  bad.data.video.num_frames = 5
  with pytest.raises(ConfigError, match="tubelet_size=2"):
    classifier.validate(bad)

  # through the command line: one line, no traceback
  proc = run_cli("linprobe", "--config=configs/linprobe_video_fmnist.py:num_frames=4",
                 f"--workdir={tmp_path / 'lp'}", f"--config.init_from={image_workdir}",
                 f"--config.data.image_size={SIZE}", "--config.model.embed_dim=64",
                 "--config.model.depth=2", "--config.model.num_heads=2")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 1 and "is an image model" in errors[0], proc.stderr[-2000:]


# ----------------------------------------------------------------- clip data


def test_every_frame_of_a_clip_gets_the_same_crop_and_flip():
  """Frame ``t`` of an augmented clip equals frame ``t`` augmented alone with the same
  random state; across seeds the crops and flips do change."""
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, size=(3, 40, 40, 1), dtype=np.uint8)
  c = classifier_config("finetune")
  c.data.update(image_size=24)
  c.data.augment.update(rrc_scale=(0.3, 0.7), reprob=0.5)
  probe = classifier_config("linprobe")
  probe.data.update(image_size=24)
  probe.data.augment.update(rrc_scale=(0.3, 0.7))
  transforms = {"finetune": finetune_augment.train_transform(c.data, (0.5,), (0.25,)),
                "linprobe": pipeline.train_transform(probe.data, (0.5,), (0.25,))}
  flips, erase_heights = set(), set()
  for name, fn in transforms.items():
    aug = (c if name == "finetune" else probe).data.augment
    for seed in range(8):
      out = fn({"image": clip, "label": 3}, np.random.default_rng(seed))
      assert out["image"].shape == (3, 24, 24, 1) and out["image"].dtype == np.uint8
      for t in range(3):
        alone = augment.crop_flip(clip[t], np.random.default_rng(seed), 24, 1, True,
                                  **augment.rrc_options(aug))
        np.testing.assert_array_equal(out["image"][t], alone)
      box_rng = np.random.default_rng(seed)
      sampler = augment.rrc_sampler(aug.rrc_sampler)
      sampler(box_rng, 40, 40, aug.rrc_scale, aug.rrc_ratio)
      flips.add(augment.flip_draw(box_rng, True))
      if name == "finetune":   # the erasing box is in frame units (24x24), not T x H
        assert out["erase"][0] + out["erase"][2] <= 24
        erase_heights.add(int(out["erase"][2]))
  assert flips == {True, False} and max(erase_heights) > 3


def test_clip_batches_mix_and_erase_as_their_frames():
  """mixup / cutmix and random erasing on clips: frame ``t`` of the result is the image
  function on frame ``t`` of every clip (one box for all frames)."""
  rng = np.random.default_rng(1)
  clips = jnp.asarray(rng.normal(size=(4, 3, 12, 12, 2)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3])
  mix_batch = jax.jit(lambda x, m: classifier.mix_batch(x, labels, m, num_classes=4,
                                                         smoothing=0.1))
  for cutmix in (False, True):
    info = finetune_augment.draw_mix(np.random.default_rng(5), 12, 12,
                                     mixup_alpha=0.0 if cutmix else 0.8,
                                     cutmix_alpha=1.0 if cutmix else 0.0)
    mix = jnp.asarray(info.as_vector())
    mixed, targets = mix_batch(clips, mix)
    for t in range(3):
      frame, frame_targets = mix_batch(clips[:, t], mix)
      np.testing.assert_array_equal(mixed[:, t], frame)
      np.testing.assert_array_equal(targets, frame_targets)
    assert not np.allclose(mixed, clips)
  boxes = jnp.asarray([[1, 2, 5, 4], [0, 0, 0, 0], [3, 3, 9, 9], [0, 6, 12, 6]], jnp.int32)
  erase = jax.jit(classifier.erase_batch, static_argnums=3)
  for mode in ("const", "rand", "pixel"):
    erased = erase(clips, boxes, jax.random.key(0), mode)
    if mode == "const":
      for t in range(3):
        np.testing.assert_array_equal(erased[:, t],
                                      erase(clips[:, t], boxes, jax.random.key(0), mode))
    changed = np.asarray(erased != clips).any(axis=-1)   # [B, T, H, W]
    assert (changed == changed[:, :1]).all()            # the same box on every frame
    assert changed[0, 0, 1:6, 2:6].all() and changed[0, 0].sum() == 20
    assert not changed[1].any()


def test_eval_batches_pad_the_last_partial_batch_of_clips(fmnist_available):
  c = classifier_config("linprobe")
  count, batches = pipeline.eval_batches(c.data, "test", global_batch=4, max_examples=6)
  batches = list(batches())
  assert count == 2 and [b["image"].shape for b in batches] == [(4, FRAMES, SIZE, SIZE, 1)] * 2
  assert batches[1]["valid"].tolist() == [True, True, False, False]
  assert not batches[1]["image"][2:].any() and batches[1]["image"][:2].any()


# ----------------------------------------------------------------- end to end


@pytest.mark.slow
def test_video_pretrain_linprobe_finetune_evaluate(tmp_path, video_mae):
  """After the two video pretraining steps of ``video_mae``: three probe steps, three
  fine-tuning steps (mixup, cutmix and erasing on), then ``evaluate`` on the
  fine-tuned workdir: the probe leaves the encoder bit-identical, the fine-tuning
  moves it, evaluate agrees with the fine-tuning's own evaluation."""
  mae_params = jax.device_get(mae_jax.load(video_mae[0]).params)

  def shrink(c):
    c.init_from = video_mae[0]
    c.num_train_steps, c.batch_size, c.eval_batch_size = 3, 8, 4
    c.data.eval_max_examples = 10   # 3 eval batches, the last one padded
    c.log_every_steps = 1
    c.checkpoint.async_save = False
    return c

  probe = shrink(classifier_config("linprobe"))
  result = classifier.train_and_evaluate(probe, str(tmp_path / "lp"))
  assert result["num_examples"] == 10 and 0.0 <= result["top1"] <= 1.0
  probe_params, _ = checkpoint_io.restore_params(
      str(tmp_path / "lp"), None, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  for name in ("patch_embed", "blocks_0", "blocks_1", "norm"):
    for a, b in zip(jax.tree.leaves(probe_params[name]), jax.tree.leaves(mae_params[name])):
      np.testing.assert_array_equal(a, b)

  ft = shrink(classifier_config("finetune"))
  ft.data.augment.update(mixup=0.8, cutmix=1.0, reprob=0.5, rrc_scale=(0.5, 1.0))
  ft_dir = str(tmp_path / "ft")
  result = classifier.train_and_evaluate(ft, ft_dir)
  ft_params, _ = checkpoint_io.restore_params(
      ft_dir, None, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  assert not np.array_equal(ft_params["blocks_0"]["mlp"]["fc1"]["kernel"],
                            mae_params["blocks_0"]["mlp"]["fc1"]["kernel"])
  with open(f"{ft_dir}/config.json") as f:
    saved_config = json.load(f)
  assert saved_config["model"]["tubelet_size"] == TUBELET
  import ml_collections
  evaluated = classifier.evaluate(ml_collections.ConfigDict(saved_config), ft_dir)
  assert evaluated["num_examples"] == 10 and evaluated["top1"] == result["top1"]
