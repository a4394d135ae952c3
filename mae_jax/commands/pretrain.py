"""mae-jax pretrain --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE ...]"""
from mae_jax.commands import common

main = common.config_command("mae_jax.train.pretrain")
