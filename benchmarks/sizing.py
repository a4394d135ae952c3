"""Expected MAE pretraining img/s on TPU slices and GPU nodes, to size a run.

img/s = MFU x chips x dense bf16 peak per chip / model FLOPs per image, with the
analytic FLOPs of ``flops.py`` (forward + backward at mask 0.75, 224x224) and the
peaks of ``flops.PEAK_BF16_FLOPS``. The MFU is an assumption (``--mfu``), not a
measurement; the paper's own run (ViT-L/16, 1600 epochs in about 31 h on 128 TPU v3
cores = 64 chips) is shown with the MFU it implies. Prints the markdown table of
``docs/scaling.md``.

  python benchmarks/sizing.py --mfu=0.4
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flops as flops_lib  # noqa: E402

IMAGENET_TRAIN = 1_281_167
VARIANTS = ("B/16", "L/16", "H/14")
# (name, device kind for the peak table, chips)
SYSTEMS = (
    ("TPU v4-64 (32 chips)", "TPU v4", 32),
    ("TPU v4-128 (64 chips)", "TPU v4", 64),
    ("TPU v5e-64 (64 chips)", "TPU v5e", 64),
    ("TPU v5p-64 (32 chips)", "TPU v5p", 32),
    ("TPU v5p-128 (64 chips)", "TPU v5p", 64),
    ("1 node, 8 x H100 SXM", "H100", 8),
    ("1 node, 8 x H200", "H200", 8),
    ("4 nodes, 32 x H100 SXM", "H100", 32),
)
# The paper: ViT-L/16, 1600 epochs, ~31 h on 128 TPU v3 cores (64 chips, 123 TFLOP/s each).
PAPER = dict(variant="L/16", epochs=1600, hours=31.0, chips=64, peak=123e12)


def img_per_s(variant: str, peak_per_chip: float, chips: int, mfu: float) -> float:
  return mfu * chips * peak_per_chip / flops_lib.variant_train_flops(variant)


def hours(epochs: int, rate: float, images: int = IMAGENET_TRAIN) -> float:
  return epochs * images / rate / 3600


def paper_mfu() -> tuple[float, float]:
  """``(img/s, MFU)`` the paper's ViT-L/16 run implies."""
  rate = PAPER["epochs"] * IMAGENET_TRAIN / (PAPER["hours"] * 3600)
  mfu = rate * flops_lib.variant_train_flops(PAPER["variant"]) / (PAPER["chips"] *
                                                                  PAPER["peak"])
  return rate, mfu


def rows(mfu: float) -> list[dict]:
  out = []
  for name, kind, chips in SYSTEMS:
    peak = flops_lib.peak_flops(kind)
    rates = {v: img_per_s(v, peak, chips, mfu) for v in VARIANTS}
    out.append(dict(system=name, chips=chips, peak_pflops=chips * peak / 1e15,
                    img_per_s=rates, l16_1600ep_hours=hours(1600, rates["L/16"])))
  return out


def markdown(mfu: float) -> str:
  rate, implied = paper_mfu()
  lines = [
      f"| system | bf16 peak (PFLOP/s) | ViT-B/16 img/s | ViT-L/16 img/s | ViT-H/14 img/s "
      f"| ViT-L/16, 1600 epochs |",
      "| --- | --- | --- | --- | --- | --- |",
      f"| paper: 128 TPU v3 cores (64 chips), measured | {PAPER['chips'] * PAPER['peak'] / 1e15:.2f} "
      f"| | {rate:,.0f} | | {PAPER['hours']:.0f} h (MFU {100 * implied:.0f}%) |",
  ]
  for r in rows(mfu):
    ips = r["img_per_s"]
    lines.append(f"| {r['system']} | {r['peak_pflops']:.2f} | {ips['B/16']:,.0f} | "
                 f"{ips['L/16']:,.0f} | {ips['H/14']:,.0f} | {r['l16_1600ep_hours']:.1f} h |")
  gflop = ", ".join(f"{v} {flops_lib.variant_train_flops(v) / 1e9:.1f}" for v in VARIANTS)
  lines.append("")
  lines.append(f"Assumed MFU {100 * mfu:.0f}%; GFLOP per image (forward + backward, mask "
               f"0.75, 224x224): {gflop}; ImageNet-1k has {IMAGENET_TRAIN:,} training images.")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mfu", type=float, default=0.4)
  args = parser.parse_args(argv)
  print(markdown(args.mfu))


if __name__ == "__main__":
  main()
