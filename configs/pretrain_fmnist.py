"""The demo: a tiny MAE pretrained on Fashion-MNIST (28x28, patch 4) on a laptop CPU.

mae-jax pretrain --config=configs/pretrain_fmnist.py --workdir=/tmp/mae_fmnist
Arg: ``steps=N`` shortens the run (e.g. ``--config=configs/pretrain_fmnist.py:steps=60``);
``target=hog`` / ``target=teacher`` change what the decoder predicts and
``contrastive=W`` adds the InfoNCE term (``mae_jax.models.targets``;
``benchmarks/objectives.py`` compares them):

* ``hog``: MaskFeat's HOG over 4x4 cells (one cell per 4x4 patch; MaskFeat's 8x8 cells
  need 16x16 patches);
* ``teacher``: data2vec 2.0's EMA teacher, the top 3 of the 4 blocks (data2vec 2.0:
  10 of 12), its decay from 0.99 to 1 over the run: data2vec 2.0's 0.9998 would leave
  the teacher at its random start for a run of 1,200 steps;
* ``contrastive=W``: two masked views per image, InfoNCE at temperature 0.1.
"""
from mae_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=1200, variant="tiny/4", target="pixels",
                             contrastive=0.0)
  c = config_lib.pretrain_defaults(arg.variant)
  c.model.norm_pix_loss = False   # plain pixels give visibly better 28x28 reconstructions
  c.model.update(target=arg.target, hog_cell=4, contrastive=arg.contrastive,
                 teacher_top_k=min(3, c.model.depth), teacher_momentum=(0.99, 1.0))
  c.data.update(name="fashion_mnist", source="auto", split="train", eval_split="test",
                image_size=28, channels=1, num_threads=0)
  c.data.augment.rrc_scale = (0.35, 1.0)
  c.batch_size = 128
  c.num_train_steps = arg.steps
  c.optim.update(base_lr=1.5e-3, warmup_epochs=0, min_lr=1e-5)
  # Warmup is 5% of the run, also when --config.num_train_steps is overridden.
  c.optim.warmup_steps = c.get_ref("num_train_steps") // 20
  c.checkpoint.update(every_steps=400, keep=2)
  c.log_every_steps = 50
  c.eval_every_steps = 400
  # The demo's quick probe reads the patch tokens concatenated (the spatial layout
  # kept), as small-image probes do: on 28x28 images mean-pooled tokens lose to a
  # probe on the raw pixels (0.804 vs 0.811), concatenated tokens beat it
  # (benchmarks/results/demo_probe.md).
  # The k-NN monitor (monitor/knn_top1 in metrics.jsonl and TensorBoard) at steps
  # 400, 800 and 1200: 2,000 training images as bank, the first 1,000 test images as
  # queries; 3,000 forward passes each, about 3.3% of the run's time (README).
  c.monitor.update(every_steps=400, bank_size=2000, query_size=1000)
  c.probe.update(enabled=True, max_train=10000, max_test=10000, features="patches")
  return c
