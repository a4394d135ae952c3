"""No overhead over plain JAX: the trainer's MAE step against a plain JAX step of the
same math, timed in one process with their windows alternated.

The project's side is ``mae_jax.train.step.make_train_step`` (the trainer's step, built
as ``pretrain_throughput.py`` builds it: flax modules, logical axis names, a mesh,
explicit shardings, the optimizer of ``mae_jax.train.optim``, and the metrics the
trainer logs). The plain side is written below in a few dozen lines of jax + optax:
patchify, argsort masking, pre-norm ViT blocks, the decoder with mask tokens, the
(norm-pix) loss and AdamW, on a dict of arrays, one ``jax.jit`` with the state
donated. Both start from the same parameters (``plain_params`` renames the project's)
and compute the same function: ``tests/test_benchmarks.py`` checks, for images and
for clips, that given the same parameters and the same masking noise the two losses and
their gradients are equal to float tolerance, and that the two AdamW updates of those
gradients are equal. (Each step draws its own masks from its own key, a fresh
uniform draw per step in both.)

``ratio_vs_plain`` (in the ``mae_jax`` row) is the project's img/s over the plain
step's, each the median of ``--repeats`` windows of ``--steps`` steps, the windows of
the two taken in turn (ABBA order), so a busy machine slows both alike. On a CPU the
rows also carry ``img_per_cpu_s`` (images per CPU-second of this process,
``time.process_time``) and ``ratio_vs_plain_cpu_time``: on a shared core the time other
processes take is left out of it. ``ratio_vs_plain_per_repeat`` pairs the windows of
each repeat.

What the project's step does that the plain one does not: the metrics the trainer
logs and checks every step (gradient and parameter norms: one more reduction per
parameter array for each, which XLA's CPU backend runs as separate small kernels --
1,229 fusions against the plain step's 801 for a ViT-S with 4 + 2 blocks), the
learning-rate value, and the logical sharding constraints (no-ops on one device).

  # images: ViT-B/16, 224x224, batch 8, one pinned CPU core
  python benchmarks/plain_jax.py --case=images --cpu_cores=1
  # clips: ViT-S, 16x112x112, 2x16x16 tubelets, tube masking at 0.9, batch 2
  python benchmarks/plain_jax.py --case=clips --cpu_cores=1
  # one GPU, batch 256, bf16
  python benchmarks/plain_jax.py --case=images --batch=256 --dtype=bfloat16 --attention=cudnn

Needs only jax, flax, optax and numpy (no ml_collections, TFDS or TensorFlow).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CASES = {
    "images": dict(variant="B/16", image_size=224, channels=3, batch=8, num_frames=0,
                   tubelet=2, mask_ratio=0.75, masking="tube"),
    "clips": dict(variant="S/16", image_size=112, channels=3, batch=2, num_frames=16,
                  tubelet=2, mask_ratio=0.9, masking="tube"),
}


# ------------------------------------------------------------------ the plain step


def plain_params(params) -> dict:
  """The project's MAE parameters as the plain step's dict of arrays (2-D kernels but for
  the attention's head-shaped ones, flat lists of blocks)."""
  import jax.numpy as jnp
  import numpy as np
  copy = lambda a, *shape: jnp.asarray(np.asarray(a).reshape(*shape) if shape else np.asarray(a))

  def blocks(prefix):
    out, i = [], 0
    while f"{prefix}_{i}" in params:
      b = params[f"{prefix}_{i}"]
      out.append(dict(
          ln1_s=copy(b["norm1"]["scale"]), ln1_b=copy(b["norm1"]["bias"]),
          qkv_w=copy(b["attn"]["qkv"]["kernel"]), qkv_b=copy(b["attn"]["qkv"]["bias"]),
          proj_w=copy(b["attn"]["proj"]["kernel"]), proj_b=copy(b["attn"]["proj"]["bias"]),
          ln2_s=copy(b["norm2"]["scale"]), ln2_b=copy(b["norm2"]["bias"]),
          fc1_w=copy(b["mlp"]["fc1"]["kernel"]), fc1_b=copy(b["mlp"]["fc1"]["bias"]),
          fc2_w=copy(b["mlp"]["fc2"]["kernel"]), fc2_b=copy(b["mlp"]["fc2"]["bias"])))
      i += 1
    return out

  embed = params["patch_embed"]["proj"]
  p = dict(patch_w=copy(embed["kernel"], -1, embed["kernel"].shape[-1]),
           patch_b=copy(embed["bias"]), blocks=blocks("blocks"),
           norm_s=copy(params["norm"]["scale"]), norm_b=copy(params["norm"]["bias"]),
           dec_w=copy(params["decoder_embed"]["kernel"]), mask_token=copy(params["mask_token"]),
           dec_blocks=blocks("decoder_blocks"),
           dec_norm_s=copy(params["decoder_norm"]["scale"]),
           dec_norm_b=copy(params["decoder_norm"]["bias"]),
           pred_w=copy(params["decoder_pred"]["kernel"]),
           pred_b=copy(params["decoder_pred"]["bias"]))
  if "cls_token" in params:
    p["cls"] = copy(params["cls_token"])
  if "bias" in params["decoder_embed"]:
    p["dec_b"] = copy(params["decoder_embed"]["bias"])
  return p


def plain_spec(model, grid) -> dict:
  """What the plain step needs to know of a ``MaskedAutoencoder`` (static settings)."""
  import numpy as np
  from mae_jax.models.pos_embed import fixed_table   # constant tables, computed once
  length = int(np.prod(grid))
  if model.masking == "tube":
    keep = grid[0] * (grid[1] * grid[2] - int(model.mask_ratio * grid[1] * grid[2]))
  else:
    keep = int(length * (1 - model.mask_ratio))
  cls = model.use_cls_token
  return dict(patch=model.patch_size, tubelet=model.tubelet_size, grid=tuple(grid), keep=keep,
              cls=cls,
              tube=model.masking == "tube", norm_pix=model.norm_pix_loss,
              per_channel=model.norm_pix_per_channel, dec_eps=model.decoder_norm_eps,
              dtype=model.dtype, attention=model.attention,
              pos=fixed_table(model.pos_table, model.embed_dim, grid, cls),
              dec_pos=fixed_table(model.pos_table, model.decoder_embed_dim, grid, cls))


def plain_loss(p: dict, images, noise, s: dict):
  """The MAE loss in plain JAX: images ``[B, H, W, C]`` or clips ``[B, T, H, W, C]``,
  ``noise [B, L]`` ranks the patches (argsort ascending, the first ``keep`` visible)."""
  import jax
  import jax.numpy as jnp
  f32, dt = jnp.float32, s["dtype"]
  mm = lambda x, w: jnp.dot(x.astype(dt), w.astype(dt))

  def norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1)   # one pass: E[x^2] - E[x]^2
    var = jnp.maximum(jax.lax.square(x).mean(-1) - jax.lax.square(mean), 0.0)
    return (x - mean[..., None]) * (jax.lax.rsqrt(var + eps)[..., None] * scale) + bias

  def attend(q, k, v):
    if s["attention"] == "cudnn":   # padded to 64 with length masks, as the design says
      n, pad = q.shape[1], -q.shape[1] % 64
      q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
      lengths = jnp.full((q.shape[0],), n, jnp.int32)
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn",
                                          query_seq_lengths=lengths,
                                          key_value_seq_lengths=lengths)[:, :n]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(q.shape[-1] ** -0.5, dt), k,
                        preferred_element_type=f32)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1).astype(dt), v)

  def block(b, x):   # qkv kernel [D, 3, heads, head_dim], proj [heads, head_dim, D]
    h = norm(x, b["ln1_s"], b["ln1_b"]).astype(dt)
    qkv = jnp.einsum("bnd,dthk->bnthk", h, b["qkv_w"].astype(dt)) + b["qkv_b"].astype(dt)
    a = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + (jnp.einsum("bnhk,hkd->bnd", a, b["proj_w"].astype(dt))
             + b["proj_b"].astype(dt)).astype(f32)
    h = jax.nn.gelu(mm(norm(x, b["ln2_s"], b["ln2_b"]), b["fc1_w"]) + b["fc1_b"].astype(dt),
                    approximate=False)
    return x + (mm(h, b["fc2_w"]) + b["fc2_b"].astype(dt)).astype(f32)

  # patchify: (t,) row, col, channel order inside a patch; tokens in (t,) row, col order
  P, t, c = s["patch"], s["tubelet"], images.shape[-1]
  if t:
    B, T, H, W = images.shape[:4]
    x = images.reshape(B, T // t, t, H // P, P, W // P, P, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  else:
    B, H, W = images.shape[:3]
    x = images.reshape(B, H // P, P, W // P, P, c).transpose(0, 1, 3, 2, 4, 5)
  patches = x.reshape(B, noise.shape[1], -1).astype(f32)
  cls, pos = int(s["cls"]), s["pos"]
  x = (mm(patches, p["patch_w"]) + p["patch_b"].astype(dt)).astype(f32) + pos[cls:]
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  x = jnp.take_along_axis(x, ids_shuffle[:, :s["keep"], None], axis=1)
  if cls:
    x = jnp.concatenate([jnp.broadcast_to(p["cls"] + pos[:1], (B, 1, x.shape[-1])), x], 1)
  for b in p["blocks"]:
    x = block(b, x)
  x = mm(norm(x, p["norm_s"], p["norm_b"]), p["dec_w"])
  x = (x + p["dec_b"].astype(dt) if "dec_b" in p else x).astype(f32)
  tokens = jnp.concatenate([x[:, cls:], jnp.broadcast_to(
      p["mask_token"], (B, noise.shape[1] - s["keep"], x.shape[-1]))], 1)
  x = jnp.concatenate([x[:, :cls], jnp.take_along_axis(tokens, ids_restore[..., None], 1)], 1)
  x = x + s["dec_pos"]
  for b in p["dec_blocks"]:
    x = block(b, x)
  x = norm(x, p["dec_norm_s"], p["dec_norm_b"], s["dec_eps"])
  pred = (mm(x, p["pred_w"]) + p["pred_b"].astype(dt))[:, cls:].astype(f32)
  target = patches
  if s["norm_pix"] and s["per_channel"]:   # VideoMAE: per channel, std + 1e-6
    g = target.reshape(B, target.shape[1], -1, c)
    g = (g - g.mean(-2, keepdims=True)) / (jnp.sqrt(g.var(-2, keepdims=True, ddof=1)) + 1e-6)
    target = g.reshape(target.shape)
  elif s["norm_pix"]:                      # MAE: per patch, unbiased variance + 1e-6
    target = ((target - target.mean(-1, keepdims=True)) /
              (target.var(-1, keepdims=True, ddof=1) + 1e-6) ** 0.5)
  mask = (ids_restore >= s["keep"]).astype(f32)
  return jnp.sum(jnp.mean((pred - target) ** 2, -1) * mask) / jnp.sum(mask)


def plain_noise(key, s: dict, batch: int):
  """Random masking's uniform noise, or tube masking's (one spatial draw per clip)."""
  import math
  import jax
  import jax.numpy as jnp
  if s["tube"]:
    gt, gh, gw = s["grid"]
    u = jax.random.uniform(key, (batch, 1, gh * gw))
    return jnp.broadcast_to(u, (batch, gt, gh * gw)).reshape(batch, -1)
  return jax.random.uniform(key, (batch, math.prod(s["grid"])))


def plain_adamw(lr, weight_decay=0.05):
  """AdamW as the MAE recipe: betas (0.9, 0.95), no decay on biases (``*_b``) and norms."""
  import jax
  import optax
  decay = lambda path, a: a.ndim > 1 and not path[-1].key.endswith("_b")
  return optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay,
                     mask=lambda p: jax.tree_util.tree_map_with_path(decay, p))


def make_plain_step(s: dict, tx, key):
  """``step((params, opt_state, step), images) -> (state, loss)``: one jit, state donated;
  the masking noise of step ``i`` is drawn from ``fold_in(key, i)``."""
  import jax
  import optax

  def step(state, images):
    params, opt_state, i = state
    noise = plain_noise(jax.random.fold_in(key, i), s, images.shape[0])
    loss, grads = jax.value_and_grad(plain_loss)(params, images, noise, s)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, i + 1), loss

  return jax.jit(step, donate_argnums=(0,))


# ------------------------------------------------------------------ timing


class PlainRun:
  """The plain step on the project run's parameters and images, compiled and run once."""

  impl = "plain_jax"

  def __init__(self, args, project, schedule):
    import jax
    import jax.numpy as jnp
    model = project.model
    self.settings = dict(project.settings)
    self.spec = plain_spec(model, project.grid)
    params = plain_params(jax.device_get(project.state.params))
    tx = plain_adamw(schedule)
    self.images = project.images
    state = (params, tx.init(params), jnp.zeros((), jnp.int32))
    self.step = make_plain_step(self.spec, tx, jax.random.key(2))
    start = time.perf_counter()
    self.compiled = self.step.lower(state, self.images).compile()
    self.compile_s = time.perf_counter() - start
    self.state, self.loss = self.compiled(state, self.images)
    jax.block_until_ready(self.loss)
    self.first_step_s = time.perf_counter() - start
    self.window(args.warmup)

  def window(self, steps: int) -> float:
    import jax
    start = time.perf_counter()
    for _ in range(steps):
      self.state, self.loss = self.compiled(self.state, self.images)
    jax.block_until_ready((self.state, self.loss))
    return time.perf_counter() - start

  def result(self) -> dict:
    import jax
    mem = self.compiled.memory_analysis()   # as MaeJaxRun reads it
    peak = getattr(mem, "peak_memory_in_bytes", 0) if mem is not None else 0
    if mem is not None and not peak:
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
              + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    return dict(peak_mem_gib=peak / 2 ** 30 if peak else None, first_step_s=self.first_step_s,
                compile_s=self.compile_s, loss=float(self.loss),
                num_params=int(sum(x.size for x in jax.tree.leaves(self.state[0]))),
                **self.settings)

  def close(self):
    del self.state, self.compiled, self.images


def project_run(args, variant, batch, dtype, attention):
  """``pretrain_throughput.MaeJaxRun`` (the trainer's step), keeping its model and grid."""
  import pretrain_throughput as pt
  from mae_jax.models import registry
  config = pt.make_config(args, variant, dtype, attention, "none")
  run = pt.MaeJaxRun(args, variant, batch, dtype, attention, "none", "float32")
  run.model = registry.build_mae(config)
  run.grid = registry.patch_grid(config)
  return run


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--case", default="images", choices=sorted(CASES),
                 help="the preset shapes; the flags below override them")
  for name, kind in (("variant", str), ("batch", int), ("image_size", int), ("channels", int),
                     ("num_frames", int), ("tubelet", int), ("mask_ratio", float),
                     ("masking", str)):
    p.add_argument(f"--{name}", type=kind, default=None)
  p.add_argument("--dims", default="",
                 help="override the variant's sizes, e.g. embed_dim=32,depth=1 (smoke runs)")
  p.add_argument("--dtype", default="auto", help="float32 or bfloat16; auto: float32 on CPUs")
  p.add_argument("--attention", default="xla", help="xla or cudnn (both steps)")
  p.add_argument("--steps", type=int, default=3, help="steps per timed window")
  p.add_argument("--repeats", type=int, default=3, help="windows per step; the median counts")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
  p.add_argument("--cpu_cores", type=int, default=0, help="pin to this many cores (0: as is)")
  p.add_argument("--out", default="", help="also append the JSON lines to this file")
  p.add_argument("--label", default="")
  args = p.parse_args(argv)
  for key, value in CASES[args.case].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.cpu_cores > 0:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpu_cores])
  import jax
  import pretrain_throughput as pt
  from mae_jax.train import optim
  info = pt.device_description()
  dtype = args.dtype if args.dtype != "auto" else (
      "float32" if info["backend"] == "cpu" else "bfloat16")
  args.hf = False
  video = (dict(num_frames=args.num_frames, tubelet_size=args.tubelet, use_cls_token=False,
                masking=args.masking) if args.num_frames else {})
  flop = pt.train_flops(args, args.variant, video)
  project = project_run(args, args.variant, args.batch, dtype, args.attention)
  config = pt.make_config(args, args.variant, dtype, args.attention, "none")
  schedule = optim.learning_rate_schedule(config.optim, args.batch, 10_000)
  plain = PlainRun(args, project, schedule)
  runs = [project, plain]
  windows = {id(r): [] for r in runs}
  cpu = {id(r): [] for r in runs}   # process CPU seconds per window
  for repeat in range(args.repeats):          # ABBA: neither side always goes first
    for run in (runs if repeat % 2 == 0 else runs[::-1]):
      start = time.process_time()
      windows[id(run)].append(run.window(args.steps))
      cpu[id(run)].append(time.process_time() - start)
  command = "python benchmarks/plain_jax.py " + " ".join(sys.argv[1:] if argv is None else argv)
  common = dict(model=pt.model_name(args.variant), variant=args.variant, **info,
                case=args.case, image_size=args.image_size, channels=args.channels,
                mask_ratio=args.mask_ratio, **video, gflop_per_img=flop / 1e9,
                steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                date=datetime.date.today().isoformat(), jax=jax.__version__,
                python=platform.python_version(), command=command, label=args.label or None,
                dims=args.dims or None,
                xla_flags=os.environ.get("XLA_FLAGS") or None)
  rows = []
  median = lambda v: sorted(v)[len(v) // 2]
  for run in runs:
    row = dict(pt.timed(run, args, windows[id(run)]), **common)
    row["mfu"] = pt.mfu(row["img_per_s"], flop, info["device"])
    if info["backend"] == "cpu":   # images per CPU-second: blind to other processes' time
      row["img_per_cpu_s"] = args.batch * args.steps / median(cpu[id(run)])
      row["img_per_cpu_s_windows"] = [args.batch * args.steps / c for c in cpu[id(run)]]
    row["load_avg_1m"] = os.getloadavg()[0]
    rows.append(row)
  ours, theirs = rows
  ours["ratio_vs_plain"] = ours["img_per_s"] / theirs["img_per_s"]
  ours["ratio_vs_plain_per_repeat"] = [
      b / a for a, b in zip(windows[id(project)], windows[id(plain)])]
  if "img_per_cpu_s" in ours:
    ours["ratio_vs_plain_cpu_time"] = ours["img_per_cpu_s"] / theirs["img_per_cpu_s"]
  for row in rows:
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")
  return rows


if __name__ == "__main__":
  main()
