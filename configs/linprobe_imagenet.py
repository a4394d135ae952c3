"""Linear probing on ImageNet-1k with the official MAE recipe (He et al., A.2).

--config=configs/linprobe_imagenet.py:variant=B/16 --config.init_from=PRETRAIN_WORKDIR
--config=configs/linprobe_imagenet.py:variant=L/16      (H/14)
--config=configs/linprobe_imagenet.py:variant=B/16,runlocal   two tiny steps on a CPU

Recipe: frozen encoder, cls token after the encoder norm, BatchNorm (no affine,
eps 1e-6) + linear head (trunc-normal std 0.01), LARS momentum 0.9 trust 0.001,
no weight decay, batch 16384, lr = 0.1 * batch / 256, 10 warmup epochs then cosine,
RandomResizedCrop + flip only. Reference top-1 of the released MAE encoders:
  ViT-B/16 68.0, ViT-L/16 75.8, ViT-H/14 76.6 (ImageNet-1k val, 224 px).
"""
from mae_jax import config_lib

# variant: (epochs, reference top-1)
RECIPES = {"B/16": (90, 68.0), "L/16": (50, 75.8), "H/14": (50, 76.6)}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="B/16", runlocal=False)
  if arg.variant not in RECIPES:
    from mae_jax.errors import ConfigError
    raise ConfigError(f"variant {arg.variant!r} has no official recipe; choose one of "
                      f"{', '.join(RECIPES)}.")
  epochs, _ = RECIPES[arg.variant]
  c = config_lib.linprobe_defaults(arg.variant)
  c.model.dtype = "bfloat16"
  c.batch_size = 16384
  c.num_epochs = epochs
  c.optim.update(base_lr=0.1, warmup_epochs=10, weight_decay=0.0)
  if arg.runlocal:  # the same program, shrunk to two tiny steps on a laptop
    config_lib.shrink_classifier_for_cpu(c)
  return c
