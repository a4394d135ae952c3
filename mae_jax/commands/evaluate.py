"""mae-jax evaluate --config=FILE[:ARG] --workdir=DIR

Top-1 / top-5 of a fine-tuning or probing workdir's latest checkpoint (also one made
by ``mae-jax import`` from a fine-tuned PyTorch model) on ``data.eval_split``,
written to ``DIR/eval.json``. The config gives the data and the model (it must be
the one the checkpoint was trained with); nothing else in the workdir changes.
"""
from mae_jax.commands import common

CONFIG_COMMAND = common.ConfigCommand("mae_jax.train.classifier",
                                     task=("finetune", "linprobe"), entry="evaluate")
define_flags, run = CONFIG_COMMAND.define_flags, CONFIG_COMMAND.run
