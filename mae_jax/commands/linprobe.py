"""mae-jax linprobe --config=FILE[:ARG] --workdir=DIR --config.init_from=PRETRAIN_WORKDIR
[--dry_run]"""
from mae_jax.commands import common

CONFIG_COMMAND = common.ConfigCommand("mae_jax.train.classifier", task="linprobe")
define_flags, run = CONFIG_COMMAND.define_flags, CONFIG_COMMAND.run
