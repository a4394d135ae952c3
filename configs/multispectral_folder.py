"""Any task on a folder of multispectral (or 16-bit, or float) images.

The images are ``.npy`` arrays or multi-band TIFFs of shape ``[H, W, C]`` in
``DATA_DIR/<split>/<class>/``, of uint8, uint16 or float32 pixels; the per-channel
mean/std are computed from the training split (written to the workdir's
config.json). Crops, flips and resizing run in NumPy on every band.

mae-jax pretrain --config=configs/multispectral_folder.py:data_dir=DIR,channels=4,size=64x96 \
    --workdir=/tmp/ms_mae
mae-jax linprobe --config=configs/multispectral_folder.py:task=linprobe,data_dir=DIR,channels=4,size=64x96 \
    --workdir=/tmp/ms_probe --config.init_from=/tmp/ms_mae
mae-jax finetune --config=configs/multispectral_folder.py:task=finetune,data_dir=DIR,channels=4,size=64x96 \
    --workdir=/tmp/ms_ft --config.init_from=/tmp/ms_mae

Args: ``task`` (pretrain, finetune, linprobe), ``data_dir``, ``channels``, ``size``
(N or HEIGHTxWIDTH, each a multiple of the patch size), ``variant`` (e.g. S/16;
default tiny/8), ``classes`` (of the classifiers), ``steps``, ``batch``, ``split`` /
``eval_split`` (the sub-folders).
RandAugment works on photos (1 or 3 channels of uint8), so it is off here.
"""
from mae_jax import config_lib
from mae_jax.errors import ConfigError


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, task="pretrain", data_dir="", channels=4, size="64x96",
                             variant="tiny/8", classes=10, steps=1000, batch=64,
                             split="train", eval_split="val")
  task = arg.task
  if task == "pretrain":
    c = config_lib.pretrain_defaults(arg.variant)
    c.optim.update(warmup_epochs=0, warmup_steps=max(1, arg.steps // 20))
    c.monitor.update(bank_size=min(c.monitor.bank_size, arg.batch),
                     query_size=min(c.monitor.query_size, arg.batch), k=min(20, arg.batch))
  elif task in ("finetune", "linprobe"):
    c = getattr(config_lib, f"{task}_defaults")(arg.variant)
    c.num_classes = arg.classes
    c.optim.update(warmup_epochs=0, warmup_steps=max(1, arg.steps // 20))
    if task == "finetune":
      c.data.augment.update(rand_augment="none", mixup=0.0, cutmix=0.0)
  else:
    raise ConfigError(f"config argument task={task!r} must be pretrain, finetune "
                                 "or linprobe.")
  c.data.update(name="multispectral", source="folder", data_dir=arg.data_dir,
                split=arg.split, eval_split=arg.eval_split, channels=arg.channels,
                num_threads=2)
  with c.data.ignore_type():  # an int or (height, width)
    c.data.image_size = config_lib.parse_size(arg.size)
  c.batch_size = arg.batch
  c.num_train_steps = arg.steps
  c.checkpoint.every_steps = max(1, min(1000, arg.steps))
  c.log_every_steps = max(1, min(50, arg.steps))
  return c
