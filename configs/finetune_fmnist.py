"""Fine-tune the Fashion-MNIST demo encoder (configs/pretrain_fmnist.py) on a CPU.

mae-jax finetune --config=configs/finetune_fmnist.py --workdir=/tmp/ft \
    --config.init_from=/tmp/mae_fmnist
Arg: ``steps=N`` (default 600), ``variant=tiny/4`` (must match the pretraining).
The official recipe (layer decay, drop path, RandAugment, random erasing, mixup /
cutmix, label smoothing) at a small scale: layer decay 0.75, drop path 0.1, blr
4e-3, and crops of 90-100% of the 28x28 image (35-100% cost a 300-step run about
7 points). A few hundred steps are too few for mixup/cutmix to pay off; to see
what the encoder gives without them, add ``--config.data.augment.mixup=0
--config.data.augment.cutmix=0``.
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=600, variant="tiny/4")
  c = config_lib.finetune_defaults(arg.variant)
  c.num_classes = 10
  c.model.update(drop_path=0.1)
  c.data.update(name="fashion_mnist", source="auto", split="train", eval_split="test",
                image_size=28, channels=1, num_threads=0)
  c.data.augment.rrc_scale = (0.9, 1.0)
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_train_steps = arg.steps
  c.optim.update(base_lr=4e-3, layer_decay=0.75, warmup_epochs=0, min_lr=1e-6)
  c.optim.warmup_steps = c.get_ref("num_train_steps") // 10
  c.checkpoint.update(every_steps=500, keep=1)
  c.log_every_steps = 50
  return c
