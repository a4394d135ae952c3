"""mae-jax pretrain --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE ...] [--dry_run]

Re-running on an existing workdir resumes from its latest checkpoint.
"""
from mae_jax.commands import common

CONFIG_COMMAND = common.ConfigCommand("mae_jax.train.pretrain")
define_flags, run = CONFIG_COMMAND.define_flags, CONFIG_COMMAND.run
