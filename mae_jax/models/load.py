"""Loading pretrained weights into a classifier (``init_from``), next to the models.

The source is any mae_jax workdir: MAE pretraining (or ``mae-jax import``),
fine-tuning or linear probing. Encoder tensors are matched by name and shape; the
position table is resized for the classifier's grid; head / fc_norm are taken
when they fit. Reading goes through ``mae_jax.checkpoint_io.restore_params``,
so a run on any number of processes reads a checkpoint written on any other.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from flax import traverse_util

from mae_jax import checkpoint_io, stacking
from mae_jax import workdir as workdir_lib
from mae_jax.errors import CheckpointError
from mae_jax.models import registry
from mae_jax.models.pos_embed import fixed_table, resize_table


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


def _shape(a) -> tuple:
  return tuple(int(d) for d in np.shape(a))


def source_params(path: str, sharding):
  """``(params as NumPy, source config, grid, description)`` of a checkpoint path.

  ``path``: an MAE workdir (pretrained or imported), a fine-tune / linear-probe
  workdir, or a ``W/checkpoints/<step>`` directory. Only the params are read,
  laid out by ``sharding`` (every process of the run reads them).
  """
  workdir, step = workdir_lib.resolve(path)
  src_config = workdir_lib.read_config(workdir)
  params, step = checkpoint_io.restore_params(workdir, step, sharding)
  kind = workdir_lib.kind(src_config)
  kind = "MAE workdir" if kind == "mae" else f"{kind} workdir"
  if registry.tubelet_size(src_config):
    kind = f"video {kind}"
  return params, src_config, registry.patch_grid(src_config), f"{kind} {workdir} (step {step})"


def check_layout(path: str, what: str, src_config, src: dict, dst: dict) -> None:
  """A ``CheckpointError`` naming the key to change when the checkpoint's model takes
  other inputs (images vs clips, another tubelet) or has (no) cls token."""
  src_tubelet = registry.tubelet_size(src_config)
  kernel = dst.get("patch_embed/proj/kernel")
  dst_tubelet = _shape(kernel)[0] if kernel is not None and len(_shape(kernel)) == 5 else 0
  head = f"config.init_from={path} ({what})"
  if src_tubelet and not dst_tubelet:
    raise CheckpointError(
        f"{head} is a video model (model.tubelet_size={src_tubelet}) but the classifier "
        "takes images; use a video classifier config (configs/finetune_video_fmnist.py, "
        f"configs/linprobe_video_fmnist.py) or --config.model.tubelet_size={src_tubelet}.")
  if dst_tubelet and not src_tubelet:
    raise CheckpointError(
        f"{head} is an image model but the classifier takes clips "
        f"(model.tubelet_size={dst_tubelet}); give a video MAE workdir (mae-jax pretrain "
        "--config=configs/pretrain_video_fmnist.py) or an image classifier config.")
  if src_tubelet != dst_tubelet:
    raise CheckpointError(
        f"{head} has model.tubelet_size={src_tubelet} but the classifier {dst_tubelet}; "
        f"set --config.model.tubelet_size={src_tubelet}.")
  src_cls, dst_cls = "cls_token" in src, "cls_token" in dst
  if src_cls != dst_cls:
    fix = ("--config.model.use_cls_token=true" if src_cls else
           "--config.model.use_cls_token=false (with model.pool=avg or mean)")
    raise CheckpointError(
        f"{head} has {'a' if src_cls else 'no'} cls token but the classifier "
        f"{'has none' if src_cls else 'has one'}; set {fix}.")


def load_pretrained(path: str, params, grid: tuple[int, int], sharding=None
                    ) -> tuple[dict, dict]:
  """Tensors of ``path`` for the classifier whose (abstract) params are ``params``.

  ``path`` is an MAE workdir (pretrained or ``mae-jax import``-ed), a fine-tune or
  linear-probe workdir, or a ``W/checkpoints/<step>`` directory. ``params`` may be a
  scanned model's (stacked blocks): tensors are named per block either way and
  ``place`` stacks them. Encoder params
  (``patch_embed``, ``cls_token``, ``blocks_*``, and ``norm`` for cls pooling) must
  all be there with the same shapes, else a ``CheckpointError`` lists the
  differences. ``pos_embed`` comes from the checkpoint's table (the fixed sin-cos
  table of an MAE workdir), bicubically resized to ``grid`` as the official code
  does. ``head`` and ``fc_norm`` are taken when present with matching shapes; a
  head for another number of classes is re-initialised with a notice.

  ``sharding`` lays out the checkpoint's params while they are read: replicated
  over the run's mesh in a multi-process run (the default, the first device, only
  works with one process).

  Returns ``(tensors, report)``: NumPy arrays by ``a/b/c`` path for what was
  loaded, and the lists ``loaded``, ``fresh`` (left as initialised) and
  ``ignored`` (checkpoint params the classifier has no use for, e.g. the decoder).
  """
  if sharding is None:  # one process: the first device
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  source, src_config, src_grid, what = source_params(path, sharding)
  src = _flat(source)
  dst = _flat(jax.eval_shape(stacking.per_block, params))  # names as the checkpoint's
  check_layout(path, what, src_config, src, dst)
  prefix = int("cls_token" in dst)
  tensors, fresh, mismatched, missing = {}, [], [], []

  # The position table: learned in a classifier (resized bicubically as the official
  # code does), a fixed sin-cos constant of the MAE model (computed for the new grid).
  if "pos_embed" in source:
    if len(grid) == 3 and tuple(src_grid) != tuple(grid):
      raise CheckpointError(
          f"config.init_from={path} ({what}) has a learned spacetime position table for a "
          f"{src_grid} patch grid, the classifier's grid is {tuple(grid)}; resizing it is "
          "not supported: use the checkpoint's data.video.num_frames and data.image_size.")
    table = resize_table(np.asarray(source["pos_embed"])[0], tuple(grid), num_prefix=prefix,
                         old_grid=src_grid)[None]
    if src_grid != tuple(grid):
      logging.info("init_from: position table resized %s -> %s (bicubic)", src_grid,
                   tuple(grid))
  else:  # the MAE's fixed table, computed for the classifier's grid
    table = fixed_table(src_config.model.get("pos_table", "sincos"),
                        src_config.model.embed_dim, tuple(grid), bool(prefix))[None]

  reinit_notice = set()
  for name, value in dst.items():
    top = name.split("/")[0]
    candidate = table if name == "pos_embed" else src.get(name)
    if candidate is not None and _shape(candidate) == _shape(value):
      tensors[name] = np.asarray(candidate).astype(value.dtype)
    elif top in ("head", "fc_norm") or (top == "norm" and "norm/scale" not in src):
      fresh.append(name)
      if candidate is not None and top not in reinit_notice:
        reinit_notice.add(top)
        if top == "head":
          logging.warning("init_from: the checkpoint's head is for %d classes, the model "
                          "has num_classes=%d; re-initialising the head.",
                          _shape(candidate)[-1], _shape(value)[-1])
        else:
          logging.warning("init_from: %s has shape %s in the checkpoint but %s here; "
                          "re-initialising %s.", name, list(_shape(candidate)),
                          list(_shape(value)), top)
    elif candidate is not None:
      mismatched.append(f"{name}: checkpoint {list(_shape(candidate))}, model "
                        f"{list(_shape(value))}")
    else:
      missing.append(name)

  extra_blocks = sorted({k.split("/")[0] for k in src if k.startswith("blocks_")} -
                        {k.split("/")[0] for k in dst if k.startswith("blocks_")},
                        key=lambda b: int(b.split("_")[1]))
  if mismatched or missing or extra_blocks:
    m = src_config.model
    more = [f"{len(mismatched) - 6} more shapes differ"] if len(mismatched) > 6 else []
    details = mismatched[:6] + more + (["missing in the checkpoint: " +
                                 ", ".join(_group(missing)[:6])] if missing else [])
    if extra_blocks:
      details.append("checkpoint blocks the model lacks: " + ", ".join(extra_blocks[:6]))
    raise CheckpointError(
        f"config.init_from={path} ({what}) does not fit the model: " + "; ".join(details) +
        f". The checkpoint has model.embed_dim={m.embed_dim}, depth={m.depth}, "
        f"num_heads={m.num_heads}, patch_size={m.patch_size}; set --config.model.* to match.")

  ignored = sorted({k.split("/")[0] for k in src} - {k.split("/")[0] for k in dst})
  if ignored:
    logging.info("init_from: ignoring checkpoint params the classifier does not use: %s",
                 ", ".join(ignored))
  if fresh:
    logging.info("init_from: freshly initialised: %s", ", ".join(_group(fresh)))
  logging.info("init_from: loaded %d tensors from %s", len(tensors), what)
  return tensors, {"loaded": sorted(tensors), "fresh": fresh, "ignored": ignored}


def _group(names) -> list[str]:
  """``head/kernel, head/bias`` -> ``head``: top-level names in order."""
  return list(dict.fromkeys(n.split("/")[0] for n in names))


def place(tensors: dict, params):
  """``params`` with the host ``tensors`` (by ``a/b/c`` path) put on their shardings.

  ``tensors`` are named per block (``blocks_{i}/...``); for a scanned model's
  ``params`` they are stacked first. ``make_array_from_callback`` works when the
  shardings span several processes.
  """
  if stacking.is_stacked(params):
    tensors = _flat(stacking.stacked(traverse_util.unflatten_dict(tensors, sep="/")))

  def put(path, ref):
    name = "/".join(getattr(k, "key", str(k)) for k in path)
    if name not in tensors:
      return ref
    a = np.asarray(tensors[name], ref.dtype)
    return jax.make_array_from_callback(a.shape, ref.sharding, lambda index: a[index])
  return jax.tree_util.tree_map_with_path(put, params)
