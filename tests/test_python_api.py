"""``mae_jax.load`` opens every kind of workdir: pretraining, fine-tuning, linear
probing, video MAE and video classifiers, or one of their ``W/checkpoints/<step>``;
a classifier's ``predict`` gives the top-1 that the project's evaluation reports."""
import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_config, tiny_classifier

FIXTURES = os.path.join(REPO, "tests", "fixtures", "workdirs_v0_1")


@pytest.fixture
def v0(tmp_path):
  shutil.copytree(FIXTURES, tmp_path / "v0")
  return tmp_path / "v0"


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_predict_gives_the_top1_that_evaluation_reports(task, v0, fmnist_available):
  """``predict`` on the eval pipeline's uint8 images, argmax against the labels, equals
  the top-1 of ``classifier.evaluate`` (the evaluator's own jitted counts) and its
  ``eval.json``."""
  import mae_jax
  from mae_jax.data import pipeline
  from mae_jax.train import classifier
  workdir = str(v0 / task)
  config = tiny_classifier(task, steps=4, init_from=str(v0 / "pretrain"))
  result = classifier.evaluate(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["top1"] == result["top1"]

  loaded = mae_jax.load(workdir)
  assert loaded.kind == task and loaded.is_classifier and loaded.step == 4
  assert set(loaded.variables) == ({"params", "batch_stats"} if task == "linprobe"
                                   else {"params"})
  data = loaded.config.data
  _, batches = pipeline.eval_batches(data, data.eval_split, global_batch=config.eval_batch_size,
                                     max_examples=config.data.eval_max_examples)
  hits = total = 0
  for batch in batches():
    logits = np.asarray(loaded.predict(batch["image"]))
    assert logits.shape == (len(batch["image"]), 10)
    valid = batch["valid"]
    hits += int(np.sum((logits.argmax(-1) == batch["label"]) & valid))
    total += int(valid.sum())
  assert total == result["num_examples"] == 64
  assert hits / total == result["top1"]


def test_pretraining_workdir_and_checkpoint_directory(v0):
  import mae_jax
  from mae_jax.errors import UserError
  loaded = mae_jax.load(str(v0 / "pretrain"))
  assert loaded.kind == "mae" and not loaded.is_classifier and loaded.batch_stats == {}
  images = jnp.zeros((2, 28, 28, 1))
  loss, pred, mask = loaded.model.apply(loaded.variables, images, train=False,
                                        rngs={"masking": jax.random.key(0)})
  assert pred.shape == (2, 16, 49) and mask.shape == (2, 16) and np.isfinite(loss)
  with pytest.raises(UserError, match="no classifier head"):
    loaded.predict(np.zeros((2, 28, 28, 1), np.uint8))
  step_dir = mae_jax.load(str(v0 / "linprobe" / "checkpoints" / "4"))
  assert step_dir.kind == "linprobe" and step_dir.step == 4
  with pytest.raises(UserError, match="uint8"):
    step_dir.predict(np.zeros((2, 28, 28, 1), np.float32))
  with pytest.raises(UserError, match=r"\[B, 28, 28, 1\]"):
    step_dir.predict(np.zeros((2, 32, 32, 1), np.uint8))


def test_classifier_workdir_is_refused_where_an_mae_is_needed(v0):
  from mae_jax import loading
  from mae_jax.errors import CheckpointError
  with pytest.raises(CheckpointError, match="finetune workdir \\(a classifier\\)"):
    loading.load_mae(str(v0 / "finetune"), use="mae-jax visualize")


FRAMES, SIZE = 4, 32
DIMS = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8)


def _random_variables(model, config, seed):
  from mae_jax.models import registry
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init({"params": jax.random.key(seed), "masking": jax.random.key(seed + 1)},
                   jnp.zeros(registry.input_shape(config)))
  return {k: nn.unbox(v) for k, v in variables.items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mae", "finetune", "linprobe"])
def test_video_workdirs_load_and_run(kind, tmp_path):
  """Video MAE and video classifier workdirs (scanned blocks for the fine-tuning one)
  load with the params that were written; the model runs on clips
  ``[B, T, H, W, C]`` and ``predict`` gives ``[B, num_classes]``."""
  import mae_jax
  from mae_jax.models import registry
  from mae_jax.train import checkpoint as ckpt_lib
  from mae_jax.train import classifier
  if kind == "mae":
    config = load_config("pretrain_video_fmnist")
    config.model.update(**DIMS, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
  else:
    config = load_config(f"{kind}_video_fmnist", f"num_frames={FRAMES}")
    config.model.update(**DIMS, scan_layers=kind == "finetune")
  config.data.video.num_frames = FRAMES
  config.data.image_size = SIZE
  model = (registry.build_mae(config) if kind == "mae" else
           classifier.build_classifier(config))
  variables = _random_variables(model, config, seed=3)
  workdir = str(tmp_path / kind)
  if kind == "mae":
    ckpt_lib.write_workdir(workdir, config, variables["params"], step=2)
  else:
    classifier.write_workdir(workdir, config, variables["params"],
                             variables.get("batch_stats"), step=2)

  loaded = mae_jax.load(workdir)
  assert loaded.kind == kind and loaded.is_video and loaded.step == 2
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  clips = np.random.default_rng(0).integers(0, 256, (2, FRAMES, SIZE, SIZE, 1), np.uint8)
  if kind == "mae":
    loss, pred, mask = loaded.model.apply(
        loaded.variables, jnp.asarray(clips, jnp.float32) / 255.0, train=False,
        rngs={"masking": jax.random.key(0)})
    tokens = (FRAMES // config.model.tubelet_size) * (SIZE // 8) ** 2
    assert mask.shape == (2, tokens) and pred.shape[:2] == (2, tokens)
    assert np.isfinite(loss)
  else:
    logits = loaded.predict(clips)
    assert logits.shape == (2, config.num_classes) and np.all(np.isfinite(logits))
