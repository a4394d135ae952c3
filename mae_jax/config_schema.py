"""The config's schema: every key a run reads, its type and its valid values, and the
rules between keys, in one place.

Every command that takes ``--config`` checks the whole config with ``check`` after
the command line's overrides are applied and before anything is read, compiled or
written (``mae_jax.train.loop.run`` checks again, for the Python API). A problem is
one ``ConfigError`` line naming the key, the value and what to give instead:

  model.num_heads=0 must be an integer >= 1.
  data.image_size=30 is not divisible by model.patch_size=4; ...

The keys a task needs are those of its defaults in ``mae_jax.config_lib``
(``pretrain_defaults``, ``finetune_defaults``, ``linprobe_defaults``); optional
sections (``data.video`` of a video model, ``ema`` of fine-tuning) are declared here
too. A key no rule declares is refused with the closest known key: a config file that
sets ``c.model.embeddim`` would otherwise add a key nothing reads.

Modules keep the checks that need more than the config: the data (the dataset's
class count, the epoch's length), the devices (the mesh, cuDNN on a GPU) or the
model's shapes (the masking strategy on the patch grid).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Iterator

from mae_jax.errors import ConfigError
from mae_jax.sizes import image_hw

INT, FLOAT, BOOL, STR, PAIR, FLOATS = "int", "float", "bool", "str", "pair", "floats"
SIZE = "size"  # an integer (a square) or a pair of integers (height, width)
_KIND_WORDS = {INT: "an integer", FLOAT: "a number", BOOL: "True or False",
               STR: "a string", PAIR: "a pair of numbers (low, high)",
               FLOATS: "a tuple of numbers",
               SIZE: "an integer or a pair of integers (height, width)"}


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one key accepts.

  ``low``/``high``: bounds (inclusive unless ``low_open``/``high_open``) of the value,
  or of each number of a ``pair``/``floats``. ``choices``: the allowed strings (a
  callable giving them, so the lists stay in the modules that implement them).
  ``blank``: a string may be empty. ``check``: a further test of the value, giving the
  problem or None. ``hint``: what a user usually wants, appended to the message.
  """
  kind: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
  blank: bool = True
  check: Callable[[Any], str | None] | None = None
  hint: str = ""

  def allowed(self) -> tuple[str, ...] | None:
    return self.choices() if callable(self.choices) else self.choices

  def in_range(self, x: float) -> bool:
    if self.low is not None and (x <= self.low if self.low_open else x < self.low):
      return False
    return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

  def range_words(self) -> str:
    lo, hi = self.low, self.high
    if lo is not None and hi is not None:
      return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
    if lo is not None:
      return f"{'>' if self.low_open else '>='} {lo:g}"
    if hi is not None:
      return f"{'<' if self.high_open else '<='} {hi:g}"
    return ""

  def expects(self) -> str:
    """``an integer >= 1``, ``one of xla, cudnn``, ..."""
    if self.allowed() is not None:
      return "one of " + ", ".join(self.allowed())
    words = _KIND_WORDS[self.kind]
    bound = self.range_words()
    if self.kind == PAIR:
      return f"{words} with low <= high, each {bound}" if bound else f"{words} with low <= high"
    if self.kind in (FLOATS, SIZE):
      return f"{words}, each {bound}" if bound else words
    return f"{words} {bound}".strip()

  def problem(self, value) -> str | None:
    """Why ``value`` is not accepted (None when it is)."""
    if not _has_kind(self.kind, value):
      return f"must be {self.expects()}"
    if self.kind in (INT, FLOAT):
      if not math.isfinite(value) or not self.in_range(value):
        return f"must be {self.expects()}"
    elif self.kind in (PAIR, FLOATS, SIZE):
      if self.kind == SIZE and isinstance(value, int):
        value = (value,)
      if not all(math.isfinite(x) and self.in_range(x) for x in value):
        return f"must be {self.expects()}"
      if self.kind == PAIR and value[0] > value[1]:
        return f"has its bounds reversed; give (low, high), e.g. ({value[1]}, {value[0]})"
    elif self.kind == STR:
      if not self.blank and not value.strip():
        return "must not be empty"
      allowed = self.allowed()
      if allowed is not None and value not in allowed:
        return f"must be {self.expects()}"
    return self.check(value) if self.check else None


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _has_kind(kind: str, value) -> bool:
  if kind == INT:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind == FLOAT:
    return _number(value)
  if kind == BOOL:
    return isinstance(value, bool)
  if kind == STR:
    return isinstance(value, str)
  if kind == PAIR:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_number, value))
  if kind == FLOATS:
    return isinstance(value, (tuple, list)) and all(map(_number, value))
  if kind == SIZE:
    is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
    return is_int(value) or (isinstance(value, (tuple, list)) and len(value) == 2 and
                             all(map(is_int, value)))
  raise ValueError(kind)


def Int(low=None, high=None, **kw) -> Rule:
  return Rule(INT, low, high, **kw)


def Float(low=None, high=None, **kw) -> Rule:
  return Rule(FLOAT, low, high, **kw)


def Bool() -> Rule:
  return Rule(BOOL)


def Str(choices=None, blank: bool = True, **kw) -> Rule:
  return Rule(STR, choices=choices, blank=blank, **kw)


def Name(**kw) -> Rule:
  """A non-empty string (a dataset, a split, a feature name)."""
  return Rule(STR, blank=False, **kw)


PROBABILITY = dict(low=0.0, high=1.0)


# --------------------------------------------------------------- choices, from their modules


def _masking_strategies():
  from mae_jax.models import masking
  return masking.STRATEGIES


def _targets():
  from mae_jax.models import targets
  return targets.TARGETS


def _attentions():
  from mae_jax.models import attention
  return attention.IMPLEMENTATIONS


def _remat_policies():
  from mae_jax.models import vit
  return tuple(vit.REMAT_POLICIES)


def _pos_tables():
  from mae_jax.models import pos_embed
  return pos_embed.TABLES


def _dtypes():
  from mae_jax.models import registry
  return tuple(registry.DTYPES)


def _sources():
  from mae_jax.data import sources
  return tuple(sources.OPENERS)


def _rrc_samplers():
  from mae_jax.data import augment
  return tuple(augment.RRC_SAMPLERS)


def _rrc_backends():
  from mae_jax.data import augment
  return tuple(augment.RRC_BACKENDS)


def _erase_modes():
  from mae_jax.data import finetune_augment
  return finetune_augment.ERASE_MODES


def _probe_features():
  from mae_jax.train import probe
  return probe.FEATURES


def _pools():
  from mae_jax.models import vit
  return vit.VisionTransformer.POOLS


def _nonfinite_modes():
  from mae_jax.train import recovery
  return recovery.MODES


def _rand_augment(spec: str) -> str | None:
  from mae_jax.data import finetune_augment
  try:
    finetune_augment.parse_rand_augment(spec)
  except ConfigError as e:
    return f"is not a RandAugment spec ({e}); e.g. rand-m9-mstd0.5-inc1, or none"
  return None


# ------------------------------------------------------------------------ the keys

SCHEMA: dict[str, Rule] = {
    # ------------------------------------------------------------------ the run
    "task": Str(("finetune", "linprobe")),
    "init_from": Str(),
    "num_classes": Int(1),
    "batch_size": Int(1),
    "eval_batch_size": Int(0, hint="0: batch_size"),
    "num_train_steps": Int(0, hint="0: the run's length is num_epochs"),
    "num_epochs": Float(0),
    "log_every_steps": Int(1),
    "eval_every_steps": Int(-1, hint="0: once per epoch, -1: only at the end"),
    "num_recon_images": Int(0),
    "seed": Int(0),
    "device_memory_gib": Float(0, hint="0: the detected size"),
    "compile_cache_dir": Str(hint="'auto', a folder (local or gs://), or '' for none"),
    # ------------------------------------------------------------------ model
    "model.name": Name(),
    "model.patch_size": Int(1),
    "model.embed_dim": Int(1),
    "model.depth": Int(1),
    "model.num_heads": Int(1),
    "model.decoder_embed_dim": Int(1),
    "model.decoder_depth": Int(1),
    "model.decoder_num_heads": Int(1),
    "model.mlp_ratio": Float(0, low_open=True),
    "model.norm_pix_loss": Bool(),
    "model.norm_pix_per_channel": Bool(),
    "model.mask_ratio": Float(0, 1, low_open=True, high_open=True, hint="MAE uses 0.75"),
    "model.masking": Str(_masking_strategies),
    "model.dtype": Str(_dtypes),
    "model.param_dtype": Str(_dtypes),
    "model.attention": Str(_attentions),
    "model.remat": Str(_remat_policies),
    "model.scan_layers": Bool(),
    "model.tubelet_size": Int(0, hint="0: an image model"),
    "model.use_cls_token": Bool(),
    "model.pos_table": Str(_pos_tables),
    "model.decoder_embed_bias": Bool(),
    "model.decoder_norm_eps": Float(0, low_open=True),
    "model.target": Str(_targets),
    "model.hog_cell": Int(1, hint="MaskFeat uses 8 (16x16 patches)"),
    "model.teacher_top_k": Int(1, hint="data2vec 2.0 averages the top 10 of 12 blocks"),
    "model.teacher_momentum": Rule(PAIR, 0, 1, hint="(start, end) of the EMA decay"),
    "model.teacher_momentum_steps": Int(0, hint="0: the whole run"),
    "model.contrastive": Float(0, hint="0: off"),
    "model.contrastive_temperature": Float(0, low_open=True),
    "model.contrastive_dim": Int(1),
    "model.pool": Str(_pools),
    "model.drop_path": Float(0, 1, high_open=True),
    "model.head_init_std": Float(0),
    # ------------------------------------------------------------------ data
    "data.name": Name(),
    "data.source": Str(_sources),
    "data.data_dir": Str(),
    "data.idx_dir": Str(),
    "data.download": Bool(),
    "data.split": Name(),
    "data.eval_split": Name(),
    "data.image_size": Rule(SIZE, 1, hint="224, or (height, width) such as (64, 96)"),
    "data.channels": Int(1),
    "data.image_key": Name(hint="the TFDS feature holding the images"),
    "data.mean": Rule(FLOATS, hint="() : the dataset's statistics"),
    "data.std": Rule(FLOATS, 0, low_open=True, hint="() : the dataset's statistics"),
    "data.num_threads": Int(0),
    "data.skip_corrupt": Bool(),
    "data.repeated_sampling": Int(1),
    "data.eval_crop_pct": Float(0, 1, low_open=True),
    "data.eval_max_examples": Int(0, hint="0: the whole split"),
    "data.augment.rrc_scale": Rule(PAIR, 0, 1, low_open=True),
    "data.augment.rrc_ratio": Rule(PAIR, 0, low_open=True),
    "data.augment.rrc_sampler": Str(_rrc_samplers),
    "data.augment.rrc_backend": Str(_rrc_backends),
    "data.augment.hflip": Bool(),
    "data.augment.rand_augment": Str(check=_rand_augment),
    "data.augment.reprob": Float(**PROBABILITY),
    "data.augment.remode": Str(_erase_modes),
    "data.augment.mixup": Float(0),
    "data.augment.cutmix": Float(0),
    "data.augment.mixup_prob": Float(**PROBABILITY),
    "data.augment.mixup_switch_prob": Float(**PROBABILITY),
    "data.augment.label_smoothing": Float(0, 1, high_open=True),
    "data.video.num_frames": Int(1),
    "data.video.stride": Int(1),
    "data.video.seed": Int(0),
    "data.video.num_items": Int(1),
    "data.video.video_key": Name(),
    "data.video.label_key": Name(),
    # ------------------------------------------------------------------ optimizer
    "optim.base_lr": Float(0, low_open=True),
    "optim.min_lr": Float(0),
    "optim.warmup_epochs": Float(0),
    "optim.warmup_steps": Int(0),
    "optim.weight_decay": Float(0),
    "optim.b1": Float(0, 1, high_open=True),
    "optim.b2": Float(0, 1, high_open=True),
    "optim.layer_decay": Float(0, 1, low_open=True),
    "optim.momentum": Float(0, 1, high_open=True),
    "optim.trust_coefficient": Float(0, low_open=True),
    "optim.clip_grad_norm": Float(0, hint="0: no clipping"),
    "optim.grad_accum_steps": Int(1),
    "optim.moments_dtype": Str(("float32", "bfloat16")),
    "optim.on_nonfinite": Str(_nonfinite_modes),
    "optim.recover.skip_batches": Int(0),
    "optim.recover.lr_factor": Float(0, 1, low_open=True,
                                     hint="1: the learning rate is left as it is"),
    "optim.recover.cooldown_steps": Int(0),
    "optim.recover.max_events": Int(1),
    "ema.enabled": Bool(),
    "ema.decay": Float(0, 1, high_open=True),
    # ------------------------------------------------------------------ parallelism
    "mesh.data": Int(-1, check=lambda n: "must be -1 (all the devices left) or >= 1"
                     if n == 0 else None),
    "mesh.fsdp": Int(-1, check=lambda n: "must be -1 or >= 1" if n == 0 else None),
    "mesh.model": Int(-1, check=lambda n: "must be -1 or >= 1" if n == 0 else None),
    "mesh.dcn_data": Int(1),
    # ------------------------------------------------------------------ checkpoints
    "checkpoint.every_steps": Int(1),
    "checkpoint.keep": Int(1),
    "checkpoint.async_save": Bool(),
    # ------------------------------------------------------------------ evaluation
    "probe.enabled": Bool(),
    "probe.max_train": Int(1),
    "probe.max_test": Int(1),
    "probe.steps": Int(1),
    "probe.lr": Float(0, low_open=True),
    "probe.weight_decay": Float(0),
    "probe.features": Str(_probe_features),
    "monitor.every_steps": Int(0, hint="0: off"),
    "monitor.bank_size": Int(1),
    "monitor.query_size": Int(1),
    "monitor.k": Int(1),
    "monitor.temperature": Float(0, low_open=True, hint="DINO's k-NN uses 0.07"),
    "profile.start_step": Int(0, hint="0: no trace"),
    "profile.num_steps": Int(1),
}

# Sections a config has only for some runs (the rest of the keys every task's defaults
# list): ``data.video`` makes a video model, ``ema`` is fine-tuning's.
OPTIONAL_SECTIONS = ("data.video", "ema")


# ------------------------------------------------------------------- rules between keys


def _size_words(size) -> str:
  return str(size) if isinstance(size, int) else f"({size[0]}, {size[1]})"


def _get(config, dotted: str, default=None):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return default
    node = node[part]
  return node


def _cross_key_rules(c) -> Iterator[str]:
  """The problems between keys (each a whole message), in the order a user fixes them."""
  task = c.get("task", "pretrain")
  m, data = c.model, c.data
  tubelet = int(m.get("tubelet_size", 0))
  # ---- steps and epochs
  steps, epochs = c.get("num_train_steps", 0), c.get("num_epochs", 0)
  if not steps and not epochs:
    yield ("num_train_steps=0 and num_epochs=0: the run has no length; set "
           "num_train_steps > 0 (wins) or num_epochs > 0.")
  warmup_steps = c.optim.get("warmup_steps", 0)
  warmup_epochs = c.optim.get("warmup_epochs", 0)
  if steps and warmup_steps > steps:
    yield (f"optim.warmup_steps={warmup_steps} is longer than the run "
           f"(num_train_steps={steps}); lower optim.warmup_steps.")
  if not steps and epochs and not warmup_steps and warmup_epochs > epochs:
    yield (f"optim.warmup_epochs={warmup_epochs} is longer than the run "
           f"(num_epochs={epochs}); lower optim.warmup_epochs.")
  # ---- patches and heads
  size, patch = data.image_size, m.patch_size
  for side in sorted(set(image_hw(size)), key=image_hw(size).index):
    if side % patch:
      low, high = side - side % patch, side - side % patch + patch
      what = "" if isinstance(size, int) else f" has a side {side} that"
      yield (f"data.image_size={_size_words(size)}{what} is not divisible by "
             f"model.patch_size={patch}; use a multiple of {patch} (e.g. "
             f"{high}{f' or {low}' if low else ''}) or another patch size.")
      break
  widths = [("", m.embed_dim, m.num_heads)]
  if task == "pretrain":
    widths.append(("decoder_", m.decoder_embed_dim, m.decoder_num_heads))
  table = m.get("pos_table", "sincos")
  for what, width, heads in widths:
    if width % heads:
      yield (f"model.{what}embed_dim={width} is not divisible by model.{what}num_heads="
             f"{heads}; each head takes an equal share of the width.")
    need = 16 if tubelet else 4
    if table == "sincos" and width % need:
      yield (f"model.{what}embed_dim={width} must be divisible by {need} for the "
             f"{3 if tubelet else 2}-D sin-cos position table"
             f"{' (or set model.pos_table=sinusoid_1d)' if tubelet else ''}.")
  # ---- the target
  target = m.get("target", "pixels")
  if task == "pretrain" and target == "hog" and patch % m.hog_cell:
    yield (f"model.hog_cell={m.hog_cell} does not divide model.patch_size={patch}; HOG "
           "cells tile each patch (MaskFeat: 8 for patch 16; e.g. 4 for patch 4).")
  if task == "pretrain" and target == "teacher":
    if m.teacher_top_k > m.depth:
      yield (f"model.teacher_top_k={m.teacher_top_k} is more than the encoder's "
             f"model.depth={m.depth} blocks; average at most {m.depth}.")
    if m.get("scan_layers", False):
      yield ("model.target=teacher reads every block's output: set "
             "model.scan_layers=False.")
  # ---- clips
  video = _get(c, "data.video")
  if tubelet and video is None:
    yield (f"model.tubelet_size={tubelet} makes a video model but the config has no "
           "data.video section; start from a video config (configs/*video*.py) or "
           "config_lib.video_defaults.")
  if tubelet and video is not None and video.num_frames % tubelet:
    yield (f"data.video.num_frames={video.num_frames} is not divisible by "
           f"model.tubelet_size={tubelet}.")
  if video is not None and (not isinstance(data.image_size, int) or
                            data.channels not in (1, 3)):
    yield (f"data.image_size={_size_words(data.image_size)}, data.channels={data.channels}: "
           "clips are read as square frames of 1 or 3 channels; give one int size and "
           "1 or 3 channels.")
  if not tubelet and m.get("masking", "random") == "tube":
    yield "model.masking=tube needs a video model (model.tubelet_size > 0)."
  # ---- normalisation statistics
  mean, std = tuple(data.get("mean", ())), tuple(data.get("std", ()))
  if bool(mean) != bool(std):
    yield "data.mean and data.std go together: give both, or neither (()) for the dataset's."
  for key, stats in (("mean", mean), ("std", std)):
    if stats and len(stats) not in (1, data.channels):
      yield (f"data.{key}={stats} has {len(stats)} values for data.channels="
             f"{data.channels}; give one per channel (or one for all).")
  # ---- the optimizer
  if c.batch_size % c.optim.get("grad_accum_steps", 1):
    yield (f"batch_size={c.batch_size} is not divisible by optim.grad_accum_steps="
           f"{c.optim.grad_accum_steps}; batch_size is split into that many micro-batches.")
  # ---- the task's own rules
  if task == "pretrain":
    monitor = c.get("monitor")
    if monitor is not None and monitor.every_steps and monitor.bank_size < monitor.k:
      yield (f"monitor.bank_size={monitor.bank_size} is smaller than monitor.k="
             f"{monitor.k}; the bank needs at least k images.")
    probe = c.get("probe")
    if probe is not None and probe.enabled and probe.features == "cls" and \
        not m.get("use_cls_token", True):
      yield "probe.features=cls but the model has no cls token (model.use_cls_token); use mean."
  else:
    pool = m.get("pool", "avg")
    if not m.get("use_cls_token", True) and pool == "cls":
      yield "model.pool=cls but the model has no cls token (model.use_cls_token); use avg or mean."
    if task == "linprobe" and m.get("drop_path", 0.0):
      yield "model.drop_path must be 0 for the linear probe (the encoder runs in inference mode)."
    aug = data.augment
    if task == "finetune":
      if data.channels not in (1, 3) and aug.get("rand_augment", "none") not in ("", "none"):
        yield (f"data.augment.rand_augment={aug.rand_augment!r}: RandAugment works on 1 or "
               f"3-channel photos, not data.channels={data.channels}; set "
               "--config.data.augment.rand_augment=none.")
      if tubelet and aug.get("rand_augment", "none") not in ("", "none"):
        yield (f"data.augment.rand_augment={aug.rand_augment!r} works on images, not clips; "
               "set --config.data.augment.rand_augment=none for a video classifier.")
      if (aug.get("mixup", 0) > 0 or aug.get("cutmix", 0) > 0) and c.batch_size % 2:
        yield (f"batch_size={c.batch_size} is odd, but mixup/cutmix pair each image with "
               "another; use an even batch_size (or data.augment.mixup=0 and cutmix=0).")


# -------------------------------------------------------------------------- checking


def leaves(node, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key in node.keys():
    value = node[key]
    if hasattr(value, "keys"):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def required_keys(task: str) -> set[str]:
  """The keys a ``task`` run reads: those of its defaults in ``config_lib``."""
  from mae_jax import config_lib
  defaults = {"pretrain": config_lib.pretrain_defaults, "finetune": config_lib.finetune_defaults,
              "linprobe": config_lib.linprobe_defaults}[task]("B/16")
  return {k for k, _ in leaves(defaults)}


def closest_key(key: str) -> str | None:
  """The declared key closest to a misspelt one (whole dotted names compared)."""
  close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.75)
  return close[0] if close else None


def unknown_key_message(key: str) -> str:
  close = closest_key(key)
  hint = f" (did you mean {close}?)" if close else ""
  return (f"unknown config key {key}{hint}; no part of mae_jax reads it (the keys and "
          "their values: mae_jax/config_schema.py).")


def problems(config) -> Iterator[str]:
  """Every problem of ``config`` as a one-line message: unknown, missing and invalid
  keys first, then the rules between keys (which assume valid values)."""
  task = config.get("task", "pretrain")
  if task not in ("pretrain", "finetune", "linprobe"):
    yield f"task={task!r} must be finetune or linprobe (or absent for pretraining)."
    return
  given = dict(leaves(config))
  found = False
  for key, value in given.items():
    rule = SCHEMA.get(key)
    if rule is None:
      found = True
      yield unknown_key_message(key)
      continue
    problem = rule.problem(value)
    if problem:
      found = True
      hint = f" ({rule.hint})" if rule.hint and "must be" in problem else ""
      yield f"{key}={value!r} {problem}{hint}."
  for key in sorted(required_keys(task) - set(given)):
    found = True
    yield (f"the config has no {key}; a {task} config needs it (start from "
           f"config_lib.{task}_defaults, as the files in configs/ do).")
  if not found:
    yield from _cross_key_rules(config)


def check(config) -> None:
  """Raises ``ConfigError`` with the first problem of ``config`` (``problems``)."""
  for problem in problems(config):
    raise ConfigError(problem)
