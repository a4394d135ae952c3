"""Linear probe of the video MAE (configs/pretrain_video_fmnist.py) on moving
Fashion-MNIST clips, on a CPU.

mae-jax linprobe --config=configs/linprobe_video_fmnist.py --workdir=/tmp/lp_video \
    --config.init_from=/tmp/mae_video
Args: ``steps=N`` (default 300), ``variant=tiny/8``, ``num_frames=8``, ``tubelet=2``
(all must match the pretraining); ``hf_layout`` for a model pretrained with
``pretrain_video_fmnist.py:hf_layout`` (its position table is taken from the
checkpoint's config either way; the key only matters without ``init_from``).

The official image probe (``configs/linprobe_fmnist.py``: BatchNorm + linear head,
LARS) with what clips change:

* no cls token (the video demo pretrains without one, as VideoMAE): the features are the mean of the
  patch tokens after the encoder's ``norm`` (``model.pool=mean``), the features
  the pretraining's quick probe reports as ``linear_probe_top1``;
* no crops, flips kept: the items move across the whole 64x64 canvas and a crop
  would cut them off (as in the pretraining config); one flip per clip, every frame
  alike;
* batch 256 -> 64 and 600 -> 300 steps: a clip is 8 frames, so a step costs about
  as much as 512 images; the probe's lr and LARS trust coefficient are the image
  demo's (base_lr 0.4 at batch 256 scales to a peak lr of 0.1);
* evaluation on the first 2,000 test clips (``data.eval_max_examples``; 0: all 10,000).
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=300, variant="tiny/8", num_frames=8, tubelet=2,
                             hf_layout=False)
  c = config_lib.linprobe_defaults(arg.variant)
  config_lib.video_classifier_defaults(c, tubelet_size=arg.tubelet, num_frames=arg.num_frames,
                                       hf_layout=arg.hf_layout)
  config_lib.moving_fmnist(c, canvas=64)
  c.num_classes = 10
  c.data.eval_max_examples = 2000
  c.batch_size = 64
  c.eval_batch_size = 250
  c.num_train_steps = arg.steps
  c.optim.update(base_lr=0.4, trust_coefficient=0.1, warmup_epochs=0)
  c.optim.warmup_steps = c.get_ref("num_train_steps") // 10
  c.eval_every_steps = -1
  c.checkpoint.update(every_steps=500, keep=1)
  c.log_every_steps = 25
  return c
