"""MAE pretraining throughput: the mae_jax train step against Hugging Face ViTMAE
(or, for clips, VideoMAE).

Times ``mae_jax.train.step.make_train_step`` (the trainer's step, not a copy) on
synthetic images already on the device, after compilation and warm-up, with
``block_until_ready``; and, when torch is installed, Hugging Face
``ViTMAEForPreTraining`` (sdpa attention, bf16 autocast, fused AdamW on CUDA) of
the same size in the same process (run first, so its memory is released before
JAX starts). ``--num_frames=T`` times clips of T frames instead, cut into
``--tubelet`` x p x p patches, with the model in VideoMAE's layout (no cls token,
1-D sinusoid table, per-channel targets; ``config_lib.videomae_layout``) and tube
masking, against ``VideoMAEForPreTraining`` given a fresh tube mask every step.
Prints one JSON object per measurement:

  impl, model, device, batch, img_per_s (clips per second for video), mfu,
  peak_mem_gib, first_step_s, ratio_vs_hf (mae_jax rows, when the HF row exists),
  and the settings.

MFU is model FLOPs (``benchmarks/flops.py``: forward + backward at the mask ratio)
times img/s over the device's dense bf16 peak; null where the peak is unknown
(CPUs). Comma-separated values of --variant/--batch/--dtype/--attention/--remat/
--moments_dtype/--scan_layers run a sweep in one process (HF once per variant/batch/dtype);
--interleave times the settings' windows in turn (fairer on a busy machine) and
--cpu_cores=1 pins a CPU run to one core. ``vit-tiny`` is mae_jax's CPU size
(width 128, 4 + 2 blocks), not DeiT-Ti.

Needs only jax, flax, optax (and torch + transformers for the HF rows): no
ml_collections, TFDS or TensorFlow, so it runs on a bare accelerator image.

  python benchmarks/pretrain_throughput.py --variant=B/16 --batch=256 \
      --dtype=bfloat16 --attention=cudnn
  python benchmarks/pretrain_throughput.py --variant=tiny/4 --image_size=28 \
      --channels=1 --batch=64 --steps=5          # a CPU smoke run
  python benchmarks/pretrain_throughput.py --variant=L/16 --num_frames=16 \
      --tubelet=2 --mask_ratio=0.9 --batch=32    # VideoMAE-L, 1,568 tokens per clip
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import itertools
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                   # flops.py
sys.path.insert(1, os.path.dirname(HERE))  # mae_jax, when run from a checkout
# JAX must not reserve 75% of the GPU up front: torch shares it in this process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flops as flops_lib  # noqa: E402

MODEL_NAMES = {"tiny": "vit-tiny", "S": "vit-small", "B": "vit-base", "L": "vit-large",
               "H": "vit-huge"}
GIB = 2 ** 30
# ``mae_jax.config_lib.videomae_layout``'s choices, spelled out because config_lib
# needs ml_collections (tests/test_benchmarks.py checks the two agree).
VIDEOMAE_LAYOUT = dict(use_cls_token=False, pos_table="sinusoid_1d", decoder_embed_bias=False,
                       norm_pix_per_channel=True, decoder_norm_eps=1e-5)


class Config(dict):
  """A dict with attribute access: the parts of a config the model and optimizer read.

  ``registry.build_mae`` and ``optim.adamw`` take any object with attribute and
  item access and ``.get``; this avoids ml_collections on the accelerator image.
  """

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def variant_dims(args, variant: str) -> dict:
  """``registry.variant_dims`` with ``--dims`` (``key=value,...``) applied."""
  from mae_jax.models import registry
  dims = registry.variant_dims(variant)
  for item in _split(getattr(args, "dims", "") or ""):
    key, value = item.split("=", 1)
    if key not in dims:
      raise ValueError(f"--dims: {key!r} is not one of {', '.join(dims)}")
    dims[key] = type(dims[key])(value)
  return dims


def train_flops(args, variant: str, video: dict) -> float:
  """Forward + backward FLOPs per image (clip) of ``variant`` as ``--dims`` shapes it."""
  return flops_lib.mae_train_flops(image_size=args.image_size, channels=args.channels,
                                   mask_ratio=args.mask_ratio,
                                   **variant_dims(args, variant), **video)


def make_config(args, variant: str, dtype: str, attention: str, remat: str,
                moments_dtype: str = "float32", scan_layers: bool = False) -> Config:
  model = Config(variant_dims(args, variant), norm_pix_loss=True,
                 mask_ratio=args.mask_ratio, dtype=dtype, param_dtype="float32",
                 attention=attention, remat=remat, scan_layers=scan_layers)
  data = Config(image_size=args.image_size, channels=args.channels)
  if args.num_frames:
    model.update(VIDEOMAE_LAYOUT, tubelet_size=args.tubelet, masking=args.masking)
    data.video = Config(num_frames=args.num_frames)
  optim = Config(base_lr=1.5e-4, min_lr=0.0, warmup_epochs=0, warmup_steps=10,
                 weight_decay=0.05, b1=0.9, b2=0.95, clip_grad_norm=0.0,
                 grad_accum_steps=1, moments_dtype=moments_dtype)
  return Config(model=model, data=data, optim=optim, seed=0)


def model_name(variant: str) -> str:
  from mae_jax.models import registry
  size, patch = registry.parse_variant(variant)
  return f"{MODEL_NAMES[size]}/{patch}"


def device_description() -> dict:
  import jax
  device = jax.devices()[0]
  out = {"device": device.device_kind, "backend": jax.default_backend(),
         "num_devices": jax.device_count()}
  if device.platform == "cpu":
    out["host_cpu"] = _cpu_model()
    out["cpu_cores"] = len(os.sched_getaffinity(0))
  return out


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def mfu(img_per_s: float, flop_per_img: float, device_kind: str) -> float | None:
  peak = flops_lib.peak_flops(device_kind)
  return None if peak is None else img_per_s * flop_per_img / peak


# ------------------------------------------------------------------ mae_jax


class MaeJaxRun:
  """The trainer's step for one setting: built, compiled and run once on creation;
  ``window(steps)`` times ``steps`` more steps."""

  impl = "mae_jax"

  def __init__(self, args, variant, batch, dtype, attention, remat, moments_dtype,
               scan_layers=False):
    import jax
    from mae_jax.models import registry
    from mae_jax.parallel import mesh as mesh_lib
    from mae_jax.parallel import sharding as sharding_lib
    from mae_jax.train import optim
    from mae_jax.train import step as step_lib

    self.settings = dict(batch=batch, dtype=dtype, attention=attention, remat=remat,
                         moments_dtype=moments_dtype, param_dtype="float32",
                         scan_layers=scan_layers)
    config = make_config(args, variant, dtype, attention, remat, moments_dtype, scan_layers)
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    mesh_lib.check_batch(batch, mesh)
    model = registry.build_mae(config)
    schedule = optim.learning_rate_schedule(config.optim, batch, 10_000)
    tx = optim.adamw(config.optim, schedule)
    shape = registry.input_shape(config, batch)
    state, shardings = step_lib.create_train_state(model, tx, mesh, (1, *shape[1:]), 0)
    step = step_lib.make_train_step(model, tx, mesh, shardings, schedule, seed=0)
    self.images = jax.jit(lambda key: jax.random.normal(key, shape),
                          out_shardings=sharding_lib.batch_sharding(mesh))(jax.random.key(1))
    jax.block_until_ready((state, self.images))

    # Compile through the trainer's jitted step and call the compiled executable:
    # one compilation, and its memory analysis comes with it.
    start = time.perf_counter()
    with jax.set_mesh(mesh), sharding_lib.logical_rules():
      self.compiled = step.jitted.lower(state, self.images).compile()
    self.compile_s = time.perf_counter() - start
    self.state, self.metrics = self.compiled(state, self.images)
    jax.block_until_ready((self.state, self.metrics))
    self.first_step_s = time.perf_counter() - start
    self.window(args.warmup)

  def window(self, steps: int) -> float:
    import jax
    start = time.perf_counter()
    for _ in range(steps):
      self.state, self.metrics = self.compiled(self.state, self.images)
    jax.block_until_ready((self.state, self.metrics))
    return time.perf_counter() - start

  def result(self) -> dict:
    import jax
    import numpy as np
    loss = float(self.metrics["loss"])
    if not np.isfinite(loss):
      raise FloatingPointError(f"non-finite loss {loss} in the benchmark")
    mem = self.compiled.memory_analysis()
    peak = getattr(mem, "peak_memory_in_bytes", 0) if mem is not None else 0
    if mem is not None and not peak:
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
              + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}
    return dict(
        peak_mem_gib=peak / GIB if peak else None,
        peak_mem_source="XLA memory analysis of the compiled step" if peak else None,
        device_peak_mem_gib=(stats["peak_bytes_in_use"] / GIB
                             if "peak_bytes_in_use" in stats else None),
        first_step_s=self.first_step_s, compile_s=self.compile_s, loss=loss,
        num_params=int(sum(x.size for x in jax.tree.leaves(self.state.params))),
        **self.settings)

  def close(self):
    del self.state, self.metrics, self.compiled, self.images
    gc.collect()


# ------------------------------------------------------------------ Hugging Face


def torch_available() -> bool:
  return (importlib.util.find_spec("torch") is not None
          and importlib.util.find_spec("transformers") is not None)


def hf_sizes(args, variant: str) -> dict:
  """The ``config.json`` keys Hugging Face's ViTMAE and VideoMAE share, for ``variant``."""
  dims = variant_dims(args, variant)
  return dict(
      hidden_size=dims["embed_dim"], num_hidden_layers=dims["depth"],
      num_attention_heads=dims["num_heads"],
      intermediate_size=int(dims["mlp_ratio"] * dims["embed_dim"]),
      decoder_hidden_size=dims["decoder_embed_dim"],
      decoder_num_hidden_layers=dims["decoder_depth"],
      decoder_num_attention_heads=dims["decoder_num_heads"],
      decoder_intermediate_size=int(dims["mlp_ratio"] * dims["decoder_embed_dim"]),
      image_size=args.image_size, patch_size=dims["patch_size"],
      num_channels=args.channels, norm_pix_loss=True, layer_norm_eps=1e-6,
      hidden_act="gelu", attn_implementation="sdpa")


class HfRun:
  """Hugging Face ``ViTMAEForPreTraining`` of the same size: sdpa attention, bf16
  autocast when ``dtype`` is bfloat16, fused AdamW on CUDA, the MAE recipe's
  AdamW settings and weight-decay groups."""

  impl = "hf_vitmae"

  def build(self, args, variant):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    return ViTMAEForPreTraining(ViTMAEConfig(**hf_sizes(args, variant),
                                             mask_ratio=args.mask_ratio))

  def inputs(self, args, batch):
    return self.torch.randn(batch, args.channels, args.image_size, args.image_size,
                            device=self.device)

  def forward_loss(self):
    return self.model(pixel_values=self.images).loss

  def __init__(self, args, variant, batch, dtype):
    import torch

    self.torch = torch
    self.cuda = torch.cuda.is_available()
    device = torch.device("cuda" if self.cuda else "cpu")
    if not self.cuda:
      torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    self.model = self.build(args, variant).to(device).train()
    named = list(self.model.named_parameters())
    decay = [p for n, p in named if p.ndim > 1 and not n.endswith("bias")]
    no_decay = [p for n, p in named if p.ndim <= 1 or n.endswith("bias")]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=1.5e-4 * batch / 256, betas=(0.9, 0.95), fused=self.cuda)
    self.autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    self.device = device
    self.images = self.inputs(args, batch)
    self.settings = dict(
        batch=batch, dtype=dtype,
        attention=getattr(getattr(self.model, "config", None), "_attn_implementation", None),
        autocast=str(self.autocast) if self.autocast else None, fused_adamw=self.cuda,
        torch_device=torch.cuda.get_device_name() if self.cuda else "cpu",
        torch_threads=None if self.cuda else torch.get_num_threads())
    if self.cuda:
      torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    self.window(1)
    self.first_step_s = time.perf_counter() - start
    self.window(args.warmup)

  def _step(self):
    torch = self.torch
    with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                        enabled=self.autocast is not None):
      loss = self.forward_loss()
    loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    self.loss = loss.detach()

  def window(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self._step()
    if self.cuda:
      self.torch.cuda.synchronize()
    else:
      float(self.loss)
    return time.perf_counter() - start

  def result(self) -> dict:
    torch = self.torch
    peak = torch.cuda.max_memory_allocated() / GIB if self.cuda else None
    return dict(peak_mem_gib=peak,
                peak_mem_source="torch.cuda.max_memory_allocated" if self.cuda else None,
                first_step_s=self.first_step_s, loss=float(self.loss),
                num_params=sum(p.numel() for p in self.model.parameters()), **self.settings)

  def close(self):
    del self.model, self.opt, self.images
    gc.collect()
    if self.cuda:
      self.torch.cuda.empty_cache()


class HfVideoRun(HfRun):
  """Hugging Face ``VideoMAEForPreTraining`` of the same size (``use_mean_pooling=False``:
  the encoder ends with a LayerNorm as ours), given a fresh mask of ``--masking``
  (tube: the same spatial mask on every time step) at ``--mask_ratio`` every step,
  drawn on the device as our step draws its own."""

  impl = "hf_videomae"

  def build(self, args, variant):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining
    return VideoMAEForPreTraining(VideoMAEConfig(
        **hf_sizes(args, variant), num_frames=args.num_frames, tubelet_size=args.tubelet,
        use_mean_pooling=False, qv_bias=True))

  def inputs(self, args, batch):
    c = self.model.config
    self.grid = (args.num_frames // args.tubelet, (args.image_size // c.patch_size) ** 2)
    self.mask_ratio, self.masking = args.mask_ratio, args.masking
    return self.torch.randn(batch, args.num_frames, args.channels, args.image_size,
                            args.image_size, device=self.device)

  def bool_masked_pos(self):
    """``[B, L]``, True = removed; the counts of ``flops.visible_tokens``."""
    torch = self.torch
    frames, spatial = self.grid
    batch = self.images.shape[0]
    if self.masking == "tube":
      keep = spatial - int(self.mask_ratio * spatial)
      rank = torch.rand(batch, spatial, device=self.device).argsort(1).argsort(1)
      return (rank >= keep).repeat(1, frames)
    keep = int(frames * spatial * (1 - self.mask_ratio))
    rank = torch.rand(batch, frames * spatial, device=self.device).argsort(1).argsort(1)
    return rank >= keep

  def forward_loss(self):
    return self.model(pixel_values=self.images, bool_masked_pos=self.bool_masked_pos()).loss


class OfficialRun(HfRun):
  """The official MAE code's structure (``official_mae.py``: ``models_mae.py`` on timm's
  blocks) of the same size, eager or under ``torch.compile``; otherwise as ``HfRun``
  (autocast, fused AdamW, weight-decay groups)."""

  def __init__(self, args, variant, batch, dtype, mode: str = "eager"):
    if mode not in ("eager", "compile"):
      raise ValueError(f"--official takes eager and/or compile, not {mode!r}")
    self.mode, self.mask_ratio = mode, args.mask_ratio
    self.compile_backend = args.torch_compile_backend
    self.impl = "official_mae" if mode == "eager" else "official_mae_compile"
    super().__init__(args, variant, batch, dtype)
    self.settings.update(attention="sdpa (timm)", torch_compile=(
        self.compile_backend if mode == "compile" else None))

  def build(self, args, variant):
    import official_mae
    d = variant_dims(args, variant)
    model = official_mae.MaskedAutoencoderViT(
        img_size=args.image_size, patch_size=d["patch_size"], in_chans=args.channels,
        embed_dim=d["embed_dim"], depth=d["depth"], num_heads=d["num_heads"],
        decoder_embed_dim=d["decoder_embed_dim"], decoder_depth=d["decoder_depth"],
        decoder_num_heads=d["decoder_num_heads"], mlp_ratio=d["mlp_ratio"],
        norm_pix_loss=True)
    if self.mode == "compile":
      return self.torch.compile(model, backend=self.compile_backend)
    return model

  def forward_loss(self):
    return self.model(self.images, mask_ratio=self.mask_ratio)[0]


def timed(run, args, windows: list[float]) -> dict:
  elapsed = sorted(windows)[len(windows) // 2]  # the median window
  batch = run.settings["batch"]
  return dict(impl=run.impl, img_per_s=batch * args.steps / elapsed,
              img_per_s_windows=[batch * args.steps / w for w in windows],
              step_ms=1e3 * elapsed / args.steps, **run.result())


# ------------------------------------------------------------------ main


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="B/16", help="SIZE/PATCH, comma-separated for a sweep")
  p.add_argument("--batch", default="256", help="global batch, comma-separated for a sweep")
  p.add_argument("--dtype", default="auto",
                 help="compute dtype(s): bfloat16, float32; auto = float32 on CPUs, "
                      "else bfloat16")
  p.add_argument("--attention", default="xla", help="xla, dot_product, cudnn, splash")
  p.add_argument("--remat", default="none", help="none, full, dots")
  p.add_argument("--moments_dtype", default="float32",
                 help="Adam first-moment dtype(s): float32, bfloat16")
  p.add_argument("--scan_layers", default="false",
                 help="false, true (model.scan_layers: blocks as one nn.scan)")
  p.add_argument("--dims", default="",
                 help="override the variant's sizes, e.g. embed_dim=32,depth=1 (smoke runs)")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--mask_ratio", type=float, default=0.75)
  p.add_argument("--num_frames", type=int, default=0,
                 help="> 0: clips of this many frames (video MAE in VideoMAE's layout, "
                      "against HF VideoMAEForPreTraining)")
  p.add_argument("--tubelet", type=int, default=2, help="frames per spacetime patch (video)")
  p.add_argument("--masking", default="tube", choices=("tube", "random"),
                 help="video masking: tube (VideoMAE) or random spacetime (MAE-ST)")
  p.add_argument("--steps", type=int, default=20, help="timed steps per window")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed windows; img_per_s is the median window")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
  p.add_argument("--hf", action=argparse.BooleanOptionalAction, default=None,
                 help="also time Hugging Face ViTMAE (default: when torch is installed)")
  p.add_argument("--official", default="",
                 help="eager and/or compile (comma-separated): also time the official MAE "
                      "code's structure (official_mae.py, timm blocks), images only")
  p.add_argument("--torch_compile_backend", default="inductor",
                 help="torch.compile backend of --official=compile (eager: tracing only)")
  p.add_argument("--no_mae_jax", action="store_true", help="only the PyTorch rows")
  p.add_argument("--interleave", action="store_true",
                 help="build every setting of a variant/batch/dtype first, then time their "
                      "windows in turn (fairer on a busy machine; holds all at once)")
  p.add_argument("--cpu_cores", type=int, default=0,
                 help="pin the process to this many cores (CPU runs; 0 = leave as is). "
                      "On a shared machine 1 gives stable numbers: torch's OpenMP threads "
                      "spin badly when the other cores are busy")
  p.add_argument("--out", default="", help="also append the JSON lines to this file")
  p.add_argument("--label", default="", help="free text stored in every row")
  return p.parse_args(argv)


def _truth(value: str) -> bool:
  return value.strip().lower() in ("1", "true", "yes", "on")


def _split(value: str, kind=str) -> list:
  return [kind(v) for v in value.split(",") if v]


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.cpu_cores > 0:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpu_cores])
  import jax
  info = device_description()
  hf = torch_available() if args.hf is None else args.hf
  video = (dict(num_frames=args.num_frames, tubelet_size=args.tubelet, use_cls_token=False,
                masking=args.masking) if args.num_frames else {})
  common = dict(image_size=args.image_size, channels=args.channels,
                mask_ratio=args.mask_ratio, **video, steps=args.steps, warmup=args.warmup,
                repeats=args.repeats, interleaved=args.interleave,
                date=datetime.date.today().isoformat(), jax=jax.__version__,
                python=platform.python_version(), label=args.label or None,
                dims=args.dims or None, xla_flags=os.environ.get("XLA_FLAGS") or None)
  rows = []

  def emit(row):
    rows.append(row)
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")

  dtypes = _split(args.dtype)
  if dtypes == ["auto"]:
    dtypes = ["float32" if info["backend"] == "cpu" else "bfloat16"]
  for variant, batch, dtype in itertools.product(
      _split(args.variant), _split(args.batch, int), dtypes):
    flop = train_flops(args, variant, video)
    base = dict(model=model_name(variant), variant=variant, **info,
                gflop_per_img=flop / 1e9, peak_flops=flops_lib.peak_flops(info["device"]))
    makers = []  # (constructor, what it is)
    if hf:  # first: without --interleave its memory is back with the driver before JAX runs
      peer = HfVideoRun if args.num_frames else HfRun
      makers.append((lambda: peer(args, variant, batch, dtype),
                     dict(impl=peer.impl, batch=batch, dtype=dtype)))
    for mode in ([] if args.num_frames else _split(args.official)):
      makers.append((lambda m=mode: OfficialRun(args, variant, batch, dtype, m),
                     dict(impl="official_mae" if mode == "eager" else "official_mae_compile",
                          batch=batch, dtype=dtype)))
    if not args.no_mae_jax:
      for setting in itertools.product(_split(args.attention), _split(args.remat),
                                       _split(args.moments_dtype),
                                       _split(args.scan_layers, _truth)):
        makers.append((lambda s=setting: MaeJaxRun(args, variant, batch, dtype, *s),
                       dict(impl="mae_jax", batch=batch, dtype=dtype, attention=setting[0],
                            remat=setting[1], moments_dtype=setting[2],
                            scan_layers=setting[3])))
    hf_row = None

    def finish(result):
      nonlocal hf_row
      row = {**base, **result, **common}
      row["load_avg_1m"] = os.getloadavg()[0]  # how busy the host was (shared machines)
      if "error" in result:
        emit(row)
        return
      row["mfu"] = mfu(row["img_per_s"], flop, info["device"])
      if result["impl"] in (HfRun.impl, HfVideoRun.impl):
        import torch
        import transformers
        row.update(torch=torch.__version__, transformers=transformers.__version__)
        hf_row = row
      elif result["impl"].startswith("official_mae"):
        import timm
        import torch
        row.update(torch=torch.__version__, timm=timm.__version__)
      if hf_row is not None and row is not hf_row:
        row["ratio_vs_hf"] = row["img_per_s"] / hf_row["img_per_s"]
      emit(row)

    if args.interleave:  # all built first, then timed windows in turn
      runs = [make() for make, _ in makers]
      windows = [[] for _ in runs]
      for _ in range(args.repeats):
        for run, w in zip(runs, windows):
          w.append(run.window(args.steps))
      for run, w in zip(runs, windows):
        finish(timed(run, args, w))
        run.close()
    else:  # one at a time, each row printed as soon as it is measured
      for make, what in makers:
        try:
          run = make()
          result = timed(run, args, [run.window(args.steps) for _ in range(args.repeats)])
          run.close()
        except Exception as e:  # keep the sweep going; the row says what failed
          result = {**what, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:500]}"}
          gc.collect()
        finish(result)
  return rows


if __name__ == "__main__":
  sys.exit(1 if any("error" in row for row in main()) else 0)
