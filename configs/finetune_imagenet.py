"""End-to-end fine-tuning on ImageNet-1k with the official MAE recipe (He et al., A.3).

--config=configs/finetune_imagenet.py:variant=B/16 --config.init_from=PRETRAIN_WORKDIR
--config=configs/finetune_imagenet.py:variant=L/16      (H/14)
--config=configs/finetune_imagenet.py:variant=B/16,runlocal   two tiny steps on a CPU

Recipe: AdamW b1=0.9 b2=0.999 wd=0.05, batch 1024, lr = blr * batch / 256, 5 warmup
epochs then cosine to 1e-6, layer-wise lr decay, drop path, global average pool +
fc_norm, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel), mixup 0.8,
cutmix 1.0 (switch prob 0.5), label smoothing 0.1. Reference top-1 of the released
MAE (pretrained 1600 epochs) after this recipe:
  ViT-B/16 83.6, ViT-L/16 85.9, ViT-H/14 86.9 (ImageNet-1k val, 224 px).
"""
from mae_jax import config_lib

# variant: (blr, layer_decay, drop_path, epochs, reference top-1)
RECIPES = {
    "B/16": (5e-4, 0.65, 0.1, 100, 83.6),
    "L/16": (1e-3, 0.75, 0.2, 50, 85.9),
    "H/14": (1e-3, 0.75, 0.3, 50, 86.9),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="B/16", runlocal=False)
  if arg.variant not in RECIPES:
    from mae_jax.errors import ConfigError
    raise ConfigError(f"variant {arg.variant!r} has no official recipe; choose one of "
                      f"{', '.join(RECIPES)}.")
  blr, layer_decay, drop_path, epochs, _ = RECIPES[arg.variant]
  c = config_lib.finetune_defaults(arg.variant)
  c.model.update(drop_path=drop_path, dtype="bfloat16")
  c.optim.update(base_lr=blr, layer_decay=layer_decay, warmup_epochs=5, min_lr=1e-6)
  c.batch_size = 1024
  c.num_epochs = epochs
  c.checkpoint.every_steps = 1000
  if arg.runlocal:  # the same program, shrunk to two tiny steps on a laptop
    config_lib.shrink_classifier_for_cpu(c)
  return c
