"""The README's performance tables, rendered from the results files, not typed.

A table lives in a Markdown file between ``<!-- table:NAME -->`` and ``<!-- /table -->``;
this script renders NAME from ``benchmarks/results/*.jsonl`` and writes it there:

  python benchmarks/tables.py            # rewrite the tables of README.md
  python benchmarks/tables.py --check    # exit 1 if a table differs from its results

``tests/test_benchmarks.py`` checks that README.md holds what this renders. Where no
result of a kind exists (no GPU run yet) the table says so. Tables:

  gpu_suite     the latest ``device_suite.py`` run on a GPU: every image setting (img/s,
                MFU, peak memory, compile time, vs Hugging Face), the video step,
                compile time cold vs cached, ViT-H/14's fit, the input pipeline
  cpu_images    the CPU pretraining step against Hugging Face ViTMAE (one pinned core)
  cpu_video     the CPU video step against Hugging Face VideoMAE (one pinned core)
  plain_jax     the trainer's step against a plain JAX step of the same math
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(os.path.dirname(HERE), "README.md")
REGION = re.compile(r"(<!-- table:(\w+) -->\n)(.*?)(<!-- /table -->)", re.S)
IMPL_NAMES = {"hf_vitmae": "Hugging Face ViTMAE (sdpa)", "hf_videomae": "Hugging Face VideoMAE (sdpa)",
              "official_mae": "official MAE code structure, eager",
              "official_mae_compile": "official MAE code structure, torch.compile",
              "mae_jax": "mae_jax", "plain_jax": "plain JAX step"}


def load(results: str = RESULTS, pattern: str = "*.jsonl") -> list[dict]:
  """Every row of the matching files, each with ``_file`` (its file's name) and ``_line``."""
  rows = []
  for path in sorted(glob.glob(os.path.join(results, pattern))):
    with open(path) as f:
      for i, line in enumerate(f):
        if line.strip():
          rows.append(dict(json.loads(line), _file=os.path.basename(path), _line=i))
  return rows


def num(value, digits: int = 0) -> str:
  if value is None:
    return "-"
  return f"{value:,.{digits}f}"


def pct(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"


def ratio(value) -> str:
  return "-" if value is None else f"{value:.2f}x"


# ------------------------------------------------------------------ GPU suite


def latest_gpu_suite(rows: list[dict]) -> list[dict]:
  """The rows of the latest file holding a full ``device_suite.py`` run on a GPU."""
  files = sorted({r["_file"] for r in rows if r.get("suite") == "full"
                  and r.get("backend") == "gpu"}, key=lambda f: (f.rsplit("_", 1)[-1], f))
  return [r for r in rows if files and r["_file"] == files[-1] and r.get("suite") == "full"]


def gpu_suite(rows: list[dict]) -> str:
  suite = latest_gpu_suite(rows)
  if not suite:
    return ("**No GPU measurement in `benchmarks/results/` yet.** One H100/H200 for about "
            "8 minutes: `python benchmarks/device_suite.py` (`benchmarks/README.md`) writes "
            "`benchmarks/results/<device>_<date>.jsonl`, and `python benchmarks/tables.py` "
            "renders it here.\n")
  env = next((r for r in suite if r.get("part") == "env" and "error" not in r), {})
  first = suite[0]
  lines = [f"Measured {first['date']} on one {env.get('device', first.get('device'))} "
           f"(driver {first.get('driver') or '?'}, jax {first['versions'].get('jax', '?')}, "
           f"torch {first['versions'].get('torch', '-')}, commit "
           f"`{(first.get('commit') or '?')[:7]}`; `{first['_file']}`), synthetic data on "
           "the device, median of timed windows:", "",
           "| model | implementation | attention | scan | img/s | MFU | peak GiB | compile s "
           "| vs HF |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for part in ("images_b16", "images_l16", "video"):
    for r in (r for r in suite if r.get("part") == part and r.get("impl") in IMPL_NAMES):
      model = r.get("model", "?") + (f", {r['num_frames']}x{r['image_size']}x{r['image_size']} "
                                     "clips" if r.get("num_frames") else "")
      if "error" in r:
        lines.append(f"| {model} | {IMPL_NAMES[r['impl']]} | {r.get('attention') or '-'} | - "
                     f"| error: {r['error'][:80]} | | | | |")
        continue
      scan = ("on" if r.get("scan_layers") else "off") if r["impl"] == "mae_jax" else "-"
      lines.append(
          f"| {model} | {IMPL_NAMES[r['impl']]} | {r.get('attention') or '-'} | {scan} | "
          f"{num(r.get('img_per_s'))} | {pct(r.get('mfu'))} | {num(r.get('peak_mem_gib'), 1)} "
          f"| {num(r.get('compile_s') or r.get('first_step_s'), 1)} | "
          f"{ratio(r.get('ratio_vs_hf'))} |")
  lines.append("")
  for r in suite:
    if r.get("part") == "compile_cache" and "error" not in r:
      lines.append(f"- Compile time of the {r['model']} step ({r['attention']}): "
                   f"{r['compile_cold_s']:.1f} s cold, {r['compile_warm_s']:.1f} s from the "
                   f"persistent cache in a fresh process ({r['warm_speedup']:.1f}x).")
    if r.get("part") == "vit_h_fit" and "error" not in r:
      what = ("XLA's estimate from shapes" if r["check"] == "dry_run"
              else "allocated and run")
      fits = {True: "fits", False: "does not fit", None: "no verdict"}[r["fits"]]
      lines.append(f"- {r['model']}, batch {r['batch']}, remat={r['remat']}, {what}: {fits}"
                   + (f" ({num(r.get('peak_gib'), 1)} GiB)" if r.get("peak_gib") else "")
                   + (f", allocator peak {num(r.get('device_peak_mem_gib'), 1)} GiB"
                      if r.get("device_peak_mem_gib") else "") + ".")
    if r.get("part") == "input_pipeline":
      lines.append(f"- Input pipeline `{r['path']}`: " + (
          f"skipped ({r['skipped']})" if "skipped" in r else f"error ({r['error']})"
          if "error" in r else f"{num(r['img_per_s'])} img/s on {r['cores']} cores"))
    if r.get("part") == "plain_jax" and r.get("ratio_vs_plain"):
      lines.append(f"- The trainer's step over a plain JAX step of the same math "
                   f"({r['model']}, batch {r['batch']}, {r['attention']}): "
                   f"{ratio(r['ratio_vs_plain'])}.")
  failed = [r for r in suite if "error" in r and r.get("impl") not in IMPL_NAMES]
  lines += [f"- Part `{r['part']}` failed: {r['error'][:120]}" for r in failed]
  return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------ CPU


def comparison_groups(rows: list[dict], peer: str) -> list[list[dict]]:
  """Runs of ``pretrain_throughput.py`` with a ``peer`` row and mae_jax rows measured
  against it (same file, label, date), pinned to one core, in file order."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    if r.get("impl") in (peer, "mae_jax") and r.get("cpu_cores") == 1 and "error" not in r:
      groups.setdefault((r["_file"], r.get("label"), r.get("date"), r.get("dtype")), []).append(r)
  return [g for g in groups.values()
          if any(r["impl"] == peer for r in g) and any(r.get("ratio_vs_hf") for r in g)]


def cpu_table(rows: list[dict], peer: str, what: str) -> str:
  groups = comparison_groups(rows, peer)
  if not groups:
    return f"No CPU comparison with {IMPL_NAMES[peer]} in `benchmarks/results/`.\n"
  g = groups[-1]   # the latest run
  hf = next(r for r in g if r["impl"] == peer)
  shape = (f"{hf['num_frames']}x{hf['image_size']}x{hf['image_size']}x{hf['channels']} clips, "
           f"tubelet {hf['tubelet_size']}" if hf.get("num_frames") else
           f"{hf['image_size']}x{hf['image_size']}x{hf['channels']} images")
  lines = [f"`{hf['_file']}`, {hf['date']}: {hf['model']}, {shape}, batch {hf['batch']}, "
           f"{hf['dtype']}, one pinned core of a shared {hf.get('host_cpu', 'CPU')} VM (load "
           f"average {hf['load_avg_1m']:.1f}), median of {hf['repeats']} "
           f"{'interleaved ' if hf.get('interleaved') else ''}windows of {hf['steps']} steps:",
           "", f"| {what} | attention | {'clips' if hf.get('num_frames') else 'img'}/s | vs HF |",
           "| --- | --- | --- | --- |",
           f"| {IMPL_NAMES[peer]} | {hf['attention']} | {num(hf['img_per_s'], 1)} | 1.00x |"]
  for r in g:
    if r["impl"] == "mae_jax":
      lines.append(f"| mae_jax | {r['attention']} | {num(r['img_per_s'], 1)} | "
                   f"**{ratio(r['ratio_vs_hf'])}** |")
  return "\n".join(lines) + "\n"


def cpu_images(rows):
  return cpu_table([r for r in rows if r["_file"].startswith("throughput_cpu_")
                    and r.get("dtype") == "float32"], "hf_vitmae", "MAE step, CPU")


def cpu_video(rows):
  return cpu_table([r for r in rows if r["_file"].startswith("throughput_video_cpu_")],
                   "hf_videomae", "video MAE step, CPU")


# ------------------------------------------------------------------ plain JAX


def plain_jax(rows: list[dict]) -> str:
  ours = [r for r in rows if r["_file"].startswith("plain_jax_")
          and r.get("impl") == "mae_jax" and r.get("ratio_vs_plain")]
  if not ours:
    return "No plain-JAX comparison in `benchmarks/results/` yet.\n"
  lines = ["| case | model, input | batch | device | mae_jax | plain JAX | ratio (wall) | "
           "ratio (CPU time) | load |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in ours:
    plain = next(p for p in rows if p["_file"] == r["_file"] and p["_line"] > r["_line"]
                 and p.get("impl") == "plain_jax")
    unit = "clips/s" if r.get("num_frames") else "img/s"
    shape = (f"{r['num_frames']}x{r['image_size']}x{r['image_size']}, tubelet "
             f"{r['tubelet_size']}, {r['masking']} masking {r['mask_ratio']}"
             if r.get("num_frames") else f"{r['image_size']}x{r['image_size']}, "
             f"mask {r['mask_ratio']}")
    device = r["device"] + (f", {r['cpu_cores']} pinned core" if r.get("cpu_cores") else "")
    lines.append(
        f"| {r['case']} | {r['model']}, {shape} | {r['batch']} | {device} | "
        f"{num(r['img_per_s'], 2)} {unit} | {num(plain['img_per_s'], 2)} {unit} | "
        f"**{ratio(r['ratio_vs_plain'])}** | {ratio(r.get('ratio_vs_plain_cpu_time'))} | "
        f"{r['load_avg_1m']:.1f} |")
  lines += ["", "Medians of " + ", ".join(sorted({f"{r['repeats']} windows of {r['steps']} steps"
                                                  for r in ours}))
            + " per side, taken in turn (ABBA); `ratio` is mae_jax over plain JAX. Commands "
            "and every window: " + ", ".join(sorted({f"`results/{r['_file']}`" for r in ours}))
            + "."]
  return "\n".join(lines) + "\n"


TABLES = {"gpu_suite": gpu_suite, "cpu_images": cpu_images, "cpu_video": cpu_video,
          "plain_jax": plain_jax}


def render_file(text: str, rows: list[dict]) -> str:
  """``text`` with every marked table region re-rendered from ``rows``."""
  def one(match):
    name = match.group(2)
    if name not in TABLES:
      raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return match.group(1) + TABLES[name](rows) + match.group(4)
  return REGION.sub(one, text)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
  p.add_argument("--results", default=RESULTS)
  p.add_argument("files", nargs="*", default=[README])
  args = p.parse_args(argv)
  rows = load(args.results)
  stale = []
  for path in args.files:
    with open(path) as f:
      text = f.read()
    new = render_file(text, rows)
    if new != text:
      stale.append(path)
      if not args.check:
        with open(path, "w") as f:
          f.write(new)
  if args.check and stale:
    print(f"tables differ from benchmarks/results in: {', '.join(stale)} "
          "(run python benchmarks/tables.py)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
