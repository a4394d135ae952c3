"""Workdirs written by mae_jax 0.1.0 (tests/fixtures/workdirs_v0_1, made by the
trainers before the one loop) still resume and load with the current code."""
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import REPO, load_config, tiny_classifier, tiny_overrides

FIXTURES = os.path.join(REPO, "tests", "fixtures", "workdirs_v0_1")


@pytest.fixture
def v0(tmp_path):
  shutil.copytree(FIXTURES, tmp_path / "v0")
  return tmp_path / "v0"


def test_v0_pretraining_workdir_loads_and_resumes(v0, fmnist_available, caplog):
  import mae_jax
  from mae_jax.train import pretrain
  before = mae_jax.load(str(v0 / "pretrain"))
  assert before.step == 4
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=6, batch=32)
  with caplog.at_level(logging.INFO):
    result = pretrain.train_and_evaluate(config, str(v0 / "pretrain"))
  assert "resumed from step 4" in caplog.text and result["step"] == 6
  after = mae_jax.load(str(v0 / "pretrain"))
  assert after.step == 6
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params),
                                                    jax.tree.leaves(after.params))]
  assert any(moved)


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_v0_classifier_workdirs_resume(task, v0, fmnist_available, caplog):
  from mae_jax.train import classifier
  config = tiny_classifier(task, steps=6, init_from=str(v0 / "pretrain"))
  with caplog.at_level(logging.INFO):
    result = classifier.train_and_evaluate(config, str(v0 / task))
  assert "resumed from step 4" in caplog.text
  assert result["step"] == 6 and 0.0 <= result["top1"] <= 1.0


def test_v0_pretraining_workdir_initialises_a_new_probe(v0, tmp_path, fmnist_available):
  from mae_jax.train import classifier
  config = tiny_classifier("linprobe", steps=2, init_from=str(v0 / "pretrain"))
  result = classifier.train_and_evaluate(config, str(tmp_path / "probe"))
  assert result["step"] == 2
