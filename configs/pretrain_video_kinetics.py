"""Video MAE (MAE-ST, Feichtenhofer et al. 2022) pretraining on Kinetics-400, ViT-L/16.

--config=configs/pretrain_video_kinetics.py                  ViT-L/16 (variant=B/16, H/14)
--config=configs/pretrain_video_kinetics.py:runlocal         two tiny steps on a CPU
--config=configs/pretrain_video_kinetics.py:dataset=NAME     another TFDS video dataset
--config=configs/pretrain_video_kinetics.py:source=video_folder --config.data.data_dir=DIR
                  video files DIR/train/<class>/<file>.mp4 (and DIR/val/...)
--config=configs/pretrain_video_kinetics.py:source=video_list --config.data.data_dir=DIR
                  VideoMAE's list files DIR/train.csv, DIR/val.csv ('path label' lines)

The recipe is the released code's (github.com/facebookresearch/mae_st, PRETRAIN.md's
ViT-L command and the defaults of main_pretrain.py / util/kinetics.py):

* clips: 16 frames every 4th frame (``--num_frames 16 --sampling_rate 4``), 224x224,
  RandomResizedCrop with relative scale (0.5, 1) and aspect (0.75, 1.3333)
  (``jitter_scales_relative`` / ``jitter_aspect_relative``) + flip, one box and one
  flip per clip; mean 0.45, std 0.225 per channel (``Kinetics`` defaults);
* model: 2x16x16 spacetime patches (``--t_patch_size 2``), 90% spacetime-agnostic
  random masking, norm-pix loss, a cls token (``cls_embed``), decoder 512 wide, 4
  blocks, 16 heads (``--decoder_embed_dim 512 --decoder_depth 4``, the
  ``decoder_num_heads`` default), every time step predicted (``--pred_t_dim 8``);
* optimiser: AdamW, betas (0.9, 0.95), weight decay 0.05 (none on biases and norms),
  gradient clipping at norm 0.02 (``--clip_grad 0.02``), cosine decay to 0 after 5
  warmup epochs, 100 epochs (``--epochs 100 --warmup_epochs 5``);
* repeated sampling 4 (``--repeat_aug 4``): each video of an epoch gives 4 clips,
  each with its own window, crop and flip, in the same batch; here
  ``data.repeated_sampling=4`` and an epoch is one pass over the videos;
* batch: 512 clips = 128 videos x 4 (PRETRAIN.md runs 2 videos x 4 repeats per GPU,
  so 64 GPUs). mae_st scales its base lr 1.6e-3 (``--blr``) by the *videos* per step
  (``eff_batch_size`` leaves out ``repeat_aug``): lr = 1.6e-3 x 128 / 256 = 8e-4. Our
  ``batch_size`` counts clips, so ``optim.base_lr`` = 1.6e-3 / 4 = 4e-4 gives the
  same lr at any batch.

Differences left in: position embeddings are the fixed 3-D sin-cos table (mae_st
learns separate space and time embeddings, ``sep_pos_embed``); the stride counts
stored frames (mae_st resamples every video to 30 fps first), so store the videos at
30 fps, or change ``data.video.stride``; videos shorter than 61 frames repeat their
last frame, as mae_st's ``temporal_sampling`` does.

Kinetics is not in the TFDS catalog. Provide it as a TFDS dataset with the features
``video`` (``tfds.features.Video``, frames short side 256 or more as mae_st's
DATASET.md resizes them) and ``label`` (``ClassLabel``), split ``train`` (and
``validation`` for the reconstruction grids), built in ArrayRecord by your own
GeneratorBasedBuilder (``tfds build --file_format=array_record`` or its
``download_and_prepare(file_format="array_record")``), and point
``--config.data.data_dir`` at its data_dir; other key names go in
``data.video.video_key`` / ``data.video.label_key``. Without it, ``runlocal``
trains on the embedded moving Fashion-MNIST.

Or keep Kinetics as video files, the way VideoMAE and mae_st read it: ``source=
video_folder`` (a folder per class) or ``source=video_list`` (VideoMAE's
``train.csv`` / ``val.csv``), decoded with PyAV (``mae_jax.data.video_files``);
the evaluation split is then ``val``. ``runlocal`` with a video ``source`` runs the
tiny model on those files.
"""
from mae_jax import config_lib
from mae_jax.errors import ConfigError

SOURCES = ("tfds", "video_folder", "video_list")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="L/16", epochs=100, dataset="kinetics400",
                             runlocal=False, source="tfds")
  if arg.source not in SOURCES:
    raise ConfigError(f"source={arg.source!r}: choose {', '.join(SOURCES)}.")
  c = config_lib.pretrain_defaults(arg.variant)
  config_lib.video_defaults(c, tubelet_size=2, num_frames=16)
  c.model.update(dtype="bfloat16", norm_pix_loss=True, mask_ratio=0.9, masking="random",
                 use_cls_token=True, decoder_embed_dim=512, decoder_depth=4,
                 decoder_num_heads=16)
  c.data.update(name=arg.dataset, source="tfds", split="train", eval_split="validation",
                image_size=224, channels=3, mean=(0.45,) * 3, std=(0.225,) * 3,
                repeated_sampling=4)
  if arg.source != "tfds":   # video files in --config.data.data_dir
    c.data.update(source=arg.source, eval_split="val")
  c.data.video.update(num_frames=16, stride=4)
  c.data.augment.update(rrc_scale=(0.5, 1.0), rrc_ratio=(0.75, 1.3333), hflip=True)
  c.batch_size = 512
  c.num_epochs = arg.epochs
  c.optim.update(base_lr=1.6e-3 / 4, min_lr=0.0, warmup_epochs=5, weight_decay=0.05,
                 b1=0.9, b2=0.95, clip_grad_norm=0.02)
  c.checkpoint.every_steps = 1000
  c.num_recon_images = 4
  if arg.runlocal:  # the same program, shrunk to two steps on a laptop
    c.model.update(dtype="float32", embed_dim=64, depth=2, num_heads=2, patch_size=8,
                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    if arg.source == "tfds":
      c.data.update(name="moving_fashion_mnist", source="auto", eval_split="test",
                    image_size=32, channels=1, mean=(), std=(), num_threads=0)
    else:
      c.data.update(image_size=32, num_threads=0)
    c.data.video.num_frames = 4
    c.batch_size = 8
    c.num_train_steps = 2
    c.optim.warmup_steps = 1
    c.checkpoint.every_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 2
    c.num_recon_images = 2
  return c
