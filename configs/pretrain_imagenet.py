"""MAE pretraining on ImageNet-1k with the official recipe (He et al., Table/Appendix A.1).

--config=configs/pretrain_imagenet.py:variant=B/16      (L/16, H/14)
--config=configs/pretrain_imagenet.py:variant=B/16,runlocal   one tiny step on a CPU

Recipe: AdamW b1=0.9 b2=0.95 wd=0.05, base_lr 1.5e-4 scaled by batch/256 (lr = 2.4e-3
at batch 4096), 40 warmup epochs, cosine decay, 800 epochs (1600 for the best
numbers), mask ratio 0.75, norm-pix loss, RandomResizedCrop(0.2-1) + flip.
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="B/16", epochs=800, runlocal=False)
  c = config_lib.pretrain_defaults(arg.variant)
  c.model.dtype = "bfloat16"
  c.data.update(name="imagenet2012", source="tfds", split="train", eval_split="validation",
                image_size=224, channels=3)
  c.num_epochs = arg.epochs
  c.checkpoint.every_steps = 1000
  # The k-NN monitor is off here (monitor.every_steps=0). To watch the encoder, e.g.
  # --config.monitor.every_steps=1250 --config.monitor.bank_size=100000
  # --config.monitor.query_size=10000: every ~4 epochs at batch 4096, 100 training
  # images per class as bank and 10,000 validation images as queries. That is 110,000
  # forward passes on all 197 tokens (ViT-B/16: ~35 GFLOP each against 58.7 per
  # training image at mask 0.75), about 1.3% of the compute and 2.2% of the JPEG
  # decodes of the 1,250 steps between two runs; bank features take 100,000 x 768
  # floats (0.3 GB) spread over the devices. A full 1.28M-image bank (DINO's
  # protocol) would cost about 15% at that interval.
  if arg.runlocal:  # the same program, shrunk to one step on a laptop
    c.model.dtype = "float32"
    c.model.update(embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=32,
                   decoder_depth=1, decoder_num_heads=2)
    c.data.update(name="fashion_mnist", source="auto", image_size=32, channels=3,
                  eval_split="test",
                  num_threads=0)
    c.model.patch_size = 16
    c.batch_size = 8
    c.num_train_steps = 1
    c.optim.warmup_steps = 1
    c.checkpoint.every_steps = 1
    c.log_every_steps = 1
  return c
