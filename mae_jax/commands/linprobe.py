"""mae-jax linprobe --config=FILE[:ARG] --workdir=DIR --config.init_from=PRETRAIN_WORKDIR"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mae_jax.commands import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local or gs://); "
                               "re-running on it resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup_logging()
  common.init_distributed()
  from mae_jax.train import linprobe
  linprobe.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
