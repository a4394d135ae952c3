"""A trained workdir opened for use in Python (``mae_jax.load``).

Every kind of workdir: MAE pretraining (or ``mae-jax import``), fine-tuning and
linear probing, on images or clips (video MAE, video classifiers), or one of its
``W/checkpoints/<step>`` directories. Only the model's variables are read (``params``,
and ``batch_stats`` of a linear probe), never the optimizer state.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from mae_jax import checkpoint_io, stacking
from mae_jax import workdir as workdir_lib
from mae_jax.errors import CheckpointError, UserError


@dataclasses.dataclass
class Loaded:
  """A model ready for use: ``model.apply(loaded.variables, images, ...)``.

  ``kind`` is ``"mae"`` (pretraining or imported), ``"finetune"`` or ``"linprobe"``
  (``config.task``); ``batch_stats`` is the linear probe's BatchNorm statistics
  (``{}`` for other models). ``params`` are ``jax.Array``s on the first device
  (replicated over ``mesh`` when there are several processes), in the block layout
  the config's ``model.scan_layers`` builds.
  """
  model: Any
  params: Any
  config: Any
  step: int
  workdir: str
  kind: str = "mae"
  batch_stats: Any = dataclasses.field(default_factory=dict)

  @property
  def is_classifier(self) -> bool:
    return self.kind != "mae"

  @property
  def is_video(self) -> bool:
    from mae_jax.models import registry
    return bool(registry.tubelet_size(self.config))

  @property
  def variables(self) -> dict:
    """``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only when there are some)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}

  def predict(self, images) -> jax.Array:
    """Logits ``[B, num_classes]`` of a classifier for a batch of raw pixels.

    ``images``: uint8 pixels (0-255), ``[B, H, W, C]`` (``[B, T, H, W, C]`` clips for a
    video classifier) at the config's ``data.image_size`` and ``data.channels``:
    what the evaluation pipeline feeds (``mae_jax.data.pipeline.eval_batches``, centre
    crop at ``data.eval_crop_pct``). They are normalised inside with the dataset's
    mean/std by ``mae_jax.train.step.to_model_input``, the evaluator's formula, and
    the model runs as in evaluation (``train=False``: no drop path, BatchNorm with its
    running statistics), so ``predict(x).argmax(-1)`` gives the top-1 that ``mae-jax
    evaluate`` counts. Already-normalised float images go to ``model.apply(variables,
    x, train=False)`` directly.
    """
    if not self.is_classifier:
      raise UserError(f"{self.workdir} is an MAE workdir: it has no classifier head. Use "
                      "model.apply(variables, images, train=False, rngs={'masking': key}) "
                      "or method=model.features for its encoder.")
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    if images.dtype != np.uint8:
      raise UserError(f"predict takes uint8 pixels (0-255), got {images.dtype}; give "
                      "normalised floats to model.apply(variables, images, train=False).")
    from mae_jax.models import registry
    want = registry.input_shape(self.config)[1:]
    if tuple(images.shape[1:]) != tuple(want):
      raise UserError(f"predict takes a batch of shape [B, {', '.join(map(str, want))}] "
                      f"(data.image_size, data.channels of {self.workdir}), got "
                      f"{list(images.shape)}.")
    return self._predict_fn(self.variables, images)

  @functools.cached_property
  def _predict_fn(self):
    from mae_jax.data import pipeline
    from mae_jax.train import step as step_lib
    pixel_stats = pipeline.normalization(self.config.data, dataset_required=False)
    model = self.model

    @jax.jit
    def logits(variables, images):
      return model.apply(variables, step_lib.to_model_input(images, pixel_stats),
                         train=False)
    return logits


def load(path: str, step: int | None = None, mesh=None) -> Loaded:
  """Opens the latest (or given) checkpoint of any workdir: a ``Loaded``.

  ``path``: a workdir or a ``W/checkpoints/<step>`` directory (local or ``gs://``).
  The model is built from the workdir's ``config.json``: ``MaskedAutoencoder`` for
  pretraining, ``VisionTransformer`` (with ``predict``) for fine-tuning and linear
  probing. Onto the first device in a single-process run; replicated over all
  devices (``mesh`` by default: every device on the data axis) when there are
  several processes.
  """
  workdir, path_step = workdir_lib.resolve(path)
  step = step if step is not None else path_step
  config = workdir_lib.read_config(workdir)
  kind = workdir_lib.kind(config)
  if kind == "mae":
    from mae_jax.models import registry
    model = registry.build_mae(config)
  else:
    from mae_jax.train import classifier
    model = classifier.build_classifier(config)
  if jax.process_count() > 1:
    from mae_jax.parallel import mesh as mesh_lib
    if mesh is None:
      mesh = mesh_lib.make_mesh(dict(data=-1, fsdp=1, model=1))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  else:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  parts, step = checkpoint_io.restore_parts(workdir, step, sharding,
                                            ("params", "batch_stats"))
  if "params" not in parts:
    raise CheckpointError(f"{workdir} (step {step}) holds no params.")
  from mae_jax.models import registry
  expected = jax.eval_shape(functools.partial(model.init, train=False),
                            {"params": jax.random.key(0), "masking": jax.random.key(1)},
                            jax.ShapeDtypeStruct(registry.input_shape(config), np.float32))
  scanned = bool(config.model.get("scan_layers", False))
  variables = {k: stacking.to_layout(parts.get(k, {}), scanned) for k in expected
               if k in ("params", "batch_stats")}
  _check_shapes(workdir, step, variables, expected)

  def put(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
  variables = jax.tree.map(put, variables)
  return Loaded(model=model, params=variables["params"], config=config, step=int(step),
                workdir=workdir, kind=kind, batch_stats=variables.get("batch_stats", {}))


def load_mae(path: str, step: int | None = None, mesh=None, *, use: str = "this") -> Loaded:
  """``load`` for what needs the MAE itself (reconstructions, analysis): a classifier
  workdir is a ``CheckpointError`` that says which workdir to give instead."""
  loaded = load(path, step, mesh)
  if loaded.is_classifier:
    raise CheckpointError(
        f"{loaded.workdir} is a {loaded.kind} workdir (a classifier), not an MAE; {use} "
        "needs a pretraining workdir (mae-jax pretrain or mae-jax import). Classifier "
        "workdirs go to mae-jax evaluate, export, finetune and linprobe (init_from), and "
        "mae_jax.load(...).predict.")
  return loaded


def _check_shapes(workdir: str, step: int, variables: dict, expected: dict) -> None:
  """A ``CheckpointError`` naming the differences when the checkpoint holds another
  model than the workdir's ``config.json`` builds."""
  flat = lambda tree: {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(a.shape)
                       for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}
  import flax.linen as nn
  saved = flat({k: variables.get(k, {}) for k in expected if k in variables})
  wanted = flat({k: nn.unbox(v) for k, v in expected.items() if k in variables})
  differ = [f"{k}: checkpoint {list(saved[k])}, config {list(wanted[k])}"
            for k in wanted if k in saved and saved[k] != wanted[k]]
  missing = [k for k in wanted if k not in saved]
  extra = [k for k in saved if k not in wanted]
  if differ or missing or extra:
    details = differ[:4] + ([f"missing in the checkpoint: {', '.join(missing[:4])}"]
                            if missing else []) + (
        [f"not in the model: {', '.join(extra[:4])}"] if extra else [])
    raise CheckpointError(
        f"{workdir}/{workdir_lib.CHECKPOINT_DIR}/{step} holds another model than its "
        f"{workdir_lib.CONFIG_FILE} builds ({'; '.join(details)}).")
