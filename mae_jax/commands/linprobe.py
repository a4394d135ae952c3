"""mae-jax linprobe --config=FILE[:ARG] --workdir=DIR --config.init_from=PRETRAIN_WORKDIR"""
from mae_jax.commands import common

main = common.config_command("mae_jax.train.classifier", task="linprobe")
