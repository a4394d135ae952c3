"""Video MAE on moving Fashion-MNIST clips (8 frames of 64x64, generated offline from
the installed Fashion-MNIST images) on a laptop CPU: MAE-ST's recipe shrunk.

mae-jax pretrain --config=configs/pretrain_video_fmnist.py --workdir=/tmp/mae_video
Args: ``steps=N`` shortens the run; ``masking=tube`` uses VideoMAE's tube masking;
``hf_layout`` trains a model that exports to Hugging Face ``VideoMAEForPreTraining``.
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=600, variant="tiny/8", masking="random",
                             hf_layout=False)
  c = config_lib.pretrain_defaults(arg.variant)
  config_lib.video_defaults(c, tubelet_size=2, num_frames=8)
  c.model.masking = arg.masking
  if arg.hf_layout:
    config_lib.videomae_layout(c)
  c.model.norm_pix_loss = False   # plain pixels, as the image demo
  # The items already move across the canvas; crops would cut them off.
  config_lib.moving_fmnist(c, canvas=64)
  c.batch_size = 32
  c.num_train_steps = arg.steps
  c.optim.update(base_lr=1.5e-3, warmup_epochs=0, min_lr=1e-5)
  c.optim.warmup_steps = c.get_ref("num_train_steps") // 20
  c.checkpoint.update(every_steps=200, keep=2)
  c.log_every_steps = 25
  c.eval_every_steps = 200
  c.num_recon_images = 4
  c.probe.update(enabled=True, max_train=2000, max_test=1000, features="mean")
  return c
