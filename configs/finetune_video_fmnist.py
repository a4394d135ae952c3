"""Fine-tune the video MAE (configs/pretrain_video_fmnist.py) on moving Fashion-MNIST
clips, on a CPU.

mae-jax finetune --config=configs/finetune_video_fmnist.py --workdir=/tmp/ft_video \
    --config.init_from=/tmp/mae_video
Args: ``steps=N`` (default 300), ``variant=tiny/8``, ``num_frames=8``, ``tubelet=2``
(all must match the pretraining); ``hf_layout`` for a model pretrained with
``pretrain_video_fmnist.py:hf_layout``.

The image demo's short-run recipe (``configs/finetune_fmnist.py``, where each change
from the official ImageNet recipe is argued and measured) carried over to clips, and
what clips change:

* the encoder of the video MAE: ``t x p x p`` spacetime patch embedding, no cls
  token, average pooling + ``fc_norm`` (MAE-ST's and VideoMAE's fine-tuning); the
  position table starts as the MAE's fixed 3-D sin-cos table and is learned;
* no crops, flips kept: the items move across the whole canvas and a crop would cut
  them off (as in the pretraining config); one flip per clip, every frame alike;
* RandAugment off (it is an image transform; refused for clips), random erasing,
  mixup and cutmix off as in the image demo (they work on clips: one box for every
  frame of a clip);
* batch 64 -> 32, 600 -> 300 steps (a clip costs 8 frames), blr 4e-3 kept (peak lr
  5e-4 at batch 32); layer decay 0.75, warmup 5% of the run, label smoothing 0.1,
  AdamW, weight decay 0.05, drop path 0, EMA off as there;
* one evaluation at the end, on the first 2,000 test clips
  (``data.eval_max_examples``; 0: all 10,000).
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=300, variant="tiny/8", num_frames=8, tubelet=2,
                             hf_layout=False)
  c = config_lib.finetune_defaults(arg.variant)
  config_lib.video_classifier_defaults(c, tubelet_size=arg.tubelet, num_frames=arg.num_frames,
                                       hf_layout=arg.hf_layout)
  config_lib.moving_fmnist(c, canvas=64)
  c.num_classes = 10
  c.model.update(drop_path=0.0)
  c.data.eval_max_examples = 2000
  c.data.augment.update(reprob=0.0, mixup=0.0, cutmix=0.0, label_smoothing=0.1)
  c.batch_size = 32
  c.eval_batch_size = 250
  c.num_train_steps = arg.steps
  c.optim.update(base_lr=4e-3, layer_decay=0.75, warmup_epochs=0, min_lr=1e-6)
  c.optim.warmup_steps = c.get_ref("num_train_steps") // 20
  c.eval_every_steps = -1
  c.checkpoint.update(every_steps=500, keep=1)
  c.log_every_steps = 25
  return c
