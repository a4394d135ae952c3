"""MAE pretraining on ImageNet-1k with the official recipe (He et al., Table/Appendix A.1).

--config=configs/pretrain_imagenet.py:variant=B/16      (L/16, H/14)
--config=configs/pretrain_imagenet.py:variant=B/16,runlocal   one tiny step on a CPU

Recipe: AdamW b1=0.9 b2=0.95 wd=0.05, base_lr 1.5e-4 scaled by batch/256 (lr = 2.4e-3
at batch 4096), 40 warmup epochs, cosine decay, 800 epochs (1600 for the best
numbers), mask ratio 0.75, norm-pix loss, RandomResizedCrop(0.2-1) + flip.

``target=hog`` / ``target=teacher`` / ``contrastive=W`` give each method's published
recipe on this MAE (encoder on the visible patches, the transformer decoder):

* ``target=hog`` -- MaskFeat (Wei et al., 2022, arXiv:2112.09133), ViT-B/16 on
  ImageNet-1k as open-mmlab/mmpretrain's configs/maskfeat/
  maskfeat_vit-base-p16_8xb256-amp-coslr-300e_in1k.py reproduces it: HOG of 9 bins
  over 8x8 cells with a 16x16 Gaussian window, block masking of 78 of 196 patches
  (0.4), RandomResizedCrop(0.5-1), AdamW (0.9, 0.999) lr 2e-4 per 256 images at
  batch 2048, weight decay 0.05, gradient clip 0.02, 30 warmup epochs of 300.
  (MaskFeat feeds mask tokens to the encoder and predicts with a linear head; here
  the decoder predicts.)
* ``target=teacher`` -- data2vec 2.0 (Baevski et al., 2023, arXiv:2212.07525), as
  facebookresearch/fairseq's examples/data2vec/config/v2/base_images_only_task.yaml:
  EMA decay 0.9998 -> 0.99999 over 100,000 updates, the average of the top 10
  instance-normalised blocks, mask 0.8, Adam (0.9, 0.95) lr 1e-3 at batch 256
  (16 GPUs x 16), weight decay 0.05, clip 4, 50,040 warmup updates of 375,300.
  (data2vec 2.0 also encodes 16 masked copies of each image, layer-normalises the
  averaged target and decodes with a CNN; none of those here.)
* ``contrastive=W`` -- CAN (Mishra et al., 2022, arXiv:2210.16870) as the PyTorch
  reimplementation bwconrad/can runs ViT-B/16: mask 0.5, InfoNCE weight 0.03 beside a
  reconstruction weight 0.67 (so ``W`` = 0.045 relative to the reconstruction; CAN's
  noise-prediction term is not implemented), temperature 0.1, 1000 epochs at batch 256.
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="B/16", epochs=800, runlocal=False,
                             target="pixels", contrastive=0.0)
  c = config_lib.pretrain_defaults(arg.variant)
  c.model.dtype = "bfloat16"
  c.data.update(name="imagenet2012", source="tfds", split="train", eval_split="validation",
                image_size=224, channels=3)
  c.num_epochs = arg.epochs
  c.checkpoint.every_steps = 1000
  c.model.target = arg.target
  if arg.target == "hog":  # MaskFeat
    c.model.update(hog_cell=8, mask_ratio=0.4, masking="block", norm_pix_loss=False)
    c.data.augment.rrc_scale = (0.5, 1.0)
    c.batch_size = 2048
    c.num_epochs = arg.epochs if arg.epochs != 800 else 300
    c.optim.update(base_lr=2e-4, b2=0.999, clip_grad_norm=0.02, warmup_epochs=30)
  elif arg.target == "teacher":  # data2vec 2.0
    c.model.update(teacher_top_k=10, teacher_momentum=(0.9998, 0.99999),
                   teacher_momentum_steps=100000, mask_ratio=0.8, norm_pix_loss=False)
    c.batch_size = 256
    c.num_train_steps = 375300
    c.optim.update(base_lr=1e-3, b2=0.95, clip_grad_norm=4.0, warmup_steps=50040)
  if arg.contrastive:  # CAN
    c.model.update(contrastive=arg.contrastive, contrastive_temperature=0.1, mask_ratio=0.5)
    c.batch_size = 256
    c.num_epochs = arg.epochs if arg.epochs != 800 else 1000
    c.optim.warmup_epochs = 40
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
    c.model.update(teacher_top_k=min(c.model.teacher_top_k, 2), teacher_momentum_steps=0,
                   mask_ratio=min(c.model.mask_ratio, 0.5))  # (4 patches: 2 stay visible)
    c.batch_size = 8
    c.num_train_steps = 1
    c.optim.warmup_steps = 1
    c.checkpoint.every_steps = 1
    c.log_every_steps = 1
  return c
