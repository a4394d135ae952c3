"""Plots for ``mae-jax analyze``, drawn with Pillow (no plotting library needed).

* ``heatmap_grid``: a grid of small images (e.g. one attention kernel per layer
  and head), each scaled to its own maximum, with row/column labels;
* ``line_chart``: one or more series with labelled axes, ticks and a legend
  (optionally log-scaled y);
* ``bar_chart``: grouped bars.

Every function returns a ``PIL.Image``; ``save`` writes it as PNG.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Viridis, sampled at 8 points.
_VIRIDIS = np.array([[68, 1, 84], [70, 50, 127], [54, 92, 141], [39, 127, 142],
                     [31, 161, 135], [74, 194, 109], [159, 218, 58], [253, 231, 37]],
                    np.float64)
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]
BLACK, GREY, LIGHT, WHITE = (0, 0, 0), (110, 110, 110), (225, 225, 225), (255, 255, 255)


def font(size: int = 13):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def _text_size(draw, text, fnt):
  box = draw.textbbox((0, 0), text, font=fnt)
  return box[2] - box[0], box[3] - box[1]


def colormap(values) -> np.ndarray:
  """Values in [0, 1] (NaN allowed: light grey) -> uint8 RGB with viridis."""
  v = np.asarray(values, np.float64)
  nan = ~np.isfinite(v)
  v = np.clip(np.where(nan, 0.0, v), 0.0, 1.0) * (len(_VIRIDIS) - 1)
  lo = np.floor(v).astype(int)
  hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
  t = (v - lo)[..., None]
  rgb = _VIRIDIS[lo] * (1 - t) + _VIRIDIS[hi] * t
  rgb[nan] = LIGHT
  return rgb.round().astype(np.uint8)


def heatmap_grid(panels, row_labels, col_labels, title: str, cell: int = 12,
                 subtitle: str = "", mark_centre: bool = True) -> Image.Image:
  """``panels [R, C, h, w]`` as a labelled grid, each panel scaled to its own max.

  Each panel's maximum is printed under it; NaN pixels are light grey. With
  ``mark_centre`` a small cross marks the centre pixel (zero displacement).
  """
  panels = np.asarray(panels, np.float64)
  rows, cols, h, w = panels.shape
  big, small = font(15), font(11)
  tmp = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  label_w = max([_text_size(tmp, str(t), small)[0] for t in row_labels] + [10]) + 12
  pw, ph = w * cell, h * cell
  gap, under = 10, 16
  top = 50 if subtitle else 34
  width = label_w + cols * (pw + gap) + gap
  height = top + 18 + rows * (ph + under + gap) + 4
  img = Image.new("RGB", (max(width, 360), height), WHITE)
  draw = ImageDraw.Draw(img)
  draw.text((8, 6), title, fill=BLACK, font=big)
  if subtitle:
    draw.text((8, 28), subtitle, fill=GREY, font=small)
  for c, text in enumerate(col_labels):
    x = label_w + c * (pw + gap) + pw // 2 - _text_size(draw, str(text), small)[0] // 2
    draw.text((x, top), str(text), fill=BLACK, font=small)
  for r in range(rows):
    y0 = top + 18 + r * (ph + under + gap)
    draw.text((4, y0 + ph // 2 - 6), str(row_labels[r]), fill=BLACK, font=small)
    for c in range(cols):
      x0 = label_w + c * (pw + gap)
      panel = panels[r, c]
      finite = panel[np.isfinite(panel)]
      peak = float(finite.max()) if finite.size else float("nan")
      scaled = panel / peak if finite.size and peak > 0 else np.zeros_like(panel)
      scaled = np.where(np.isfinite(panel), scaled, np.nan)
      rgb = np.repeat(np.repeat(colormap(scaled), cell, 0), cell, 1)
      img.paste(Image.fromarray(rgb), (x0, y0))
      draw.rectangle([x0 - 1, y0 - 1, x0 + pw, y0 + ph], outline=GREY)
      if mark_centre:
        cx, cy = x0 + (w // 2) * cell + cell // 2, y0 + (h // 2) * cell + cell // 2
        draw.line([cx - 2, cy, cx + 2, cy], fill=WHITE)
        draw.line([cx, cy - 2, cx, cy + 2], fill=WHITE)
      draw.text((x0, y0 + ph + 2), f"max {peak:.3g}", fill=GREY, font=small)
  return img


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
  """Round tick values covering [lo, hi]."""
  if not (math.isfinite(lo) and math.isfinite(hi)):
    return []
  if hi <= lo:
    hi = lo + (abs(lo) if lo else 1.0)
  raw = (hi - lo) / max(count, 1)
  mag = 10 ** math.floor(math.log10(raw))
  step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
  start = math.floor(lo / step) * step
  ticks = []
  t = start
  while t <= hi + 1e-9 * step:
    if t >= lo - 1e-9 * step:
      ticks.append(round(t, 12))
    t += step
  return ticks


def _fmt(v: float) -> str:
  if v == 0:
    return "0"
  if abs(v) >= 1e4 or abs(v) < 1e-3:
    return f"{v:.0e}"
  return f"{v:.4g}"


def line_chart(series, title: str, xlabel: str, ylabel: str, log_y: bool = False,
               xtick_labels=None, size=(640, 400), markers: bool = True,
               dashed=()) -> Image.Image:
  """``series``: list of ``(label, xs, ys)``; NaN points are skipped.

  ``xtick_labels``: optional ``{x: text}`` replacing the numeric x ticks.
  ``dashed``: labels of series drawn dashed (e.g. references).
  """
  big, small = font(15), font(11)
  width, height = size[0] + _legend_width([s[0] for s in series], small), size[1]
  left, right, top, bottom = 70, 20 + _legend_width([s[0] for s in series], small), 40, 58
  img = Image.new("RGB", (width, height), WHITE)
  draw = ImageDraw.Draw(img)
  draw.text((left, 10), title, fill=BLACK, font=big)
  pts = [(float(x), float(y)) for _, xs, ys in series for x, y in zip(xs, ys)
         if y is not None and math.isfinite(float(y)) and (not log_y or float(y) > 0)]
  if not pts:
    draw.text((left, height // 2), "no data", fill=GREY, font=small)
    return img
  xs_all = [p[0] for p in pts]
  ys_all = [math.log10(p[1]) if log_y else p[1] for p in pts]
  x0, x1 = min(xs_all), max(xs_all)
  if x1 == x0:
    x0, x1 = x0 - 0.5, x1 + 0.5
  y0, y1 = min(ys_all), max(ys_all)
  if not log_y:
    y0 = min(y0, 0.0) if y0 >= 0 and y0 < 0.35 * y1 else y0
  pad = 0.05 * ((y1 - y0) or 1.0)
  y0, y1 = y0 - pad, y1 + pad
  pw, ph = width - left - right, height - top - bottom
  sx = lambda x: left + (x - x0) / (x1 - x0) * pw
  sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph
  # grid and ticks
  if log_y:
    yticks = [float(e) for e in range(math.floor(y0), math.ceil(y1) + 1) if y0 <= e <= y1]
    if len(yticks) < 2:
      yticks = nice_ticks(y0, y1)
    ylabels = [_fmt(10 ** t) for t in yticks]
  else:
    yticks = nice_ticks(y0, y1)
    ylabels = [_fmt(t) for t in yticks]
  for t, text in zip(yticks, ylabels):
    y = sy(t)
    draw.line([left, y, left + pw, y], fill=LIGHT)
    tw, th = _text_size(draw, text, small)
    draw.text((left - tw - 6, y - th // 2 - 1), text, fill=BLACK, font=small)
  if xtick_labels:
    xticks = [(float(k), str(v)) for k, v in xtick_labels.items()]
  else:
    xticks = [(t, _fmt(t)) for t in nice_ticks(x0, x1, 6)]
    if all(float(x).is_integer() for x in xs_all):    # e.g. indices: integer ticks only
      whole = [(t, _fmt(t)) for t, _ in xticks if float(t).is_integer()]
      xticks = whole if len(whole) >= 2 else xticks
  for t, text in xticks:
    x = sx(t)
    draw.line([x, top + ph, x, top + ph + 4], fill=BLACK)
    tw, _ = _text_size(draw, text, small)
    draw.text((x - tw // 2, top + ph + 6), text, fill=BLACK, font=small)
  draw.rectangle([left, top, left + pw, top + ph], outline=BLACK)
  tw, _ = _text_size(draw, xlabel, small)
  draw.text((left + pw // 2 - tw // 2, height - 22), xlabel, fill=BLACK, font=small)
  ylab = Image.new("RGB", (_text_size(draw, ylabel, small)[0] + 4, 16), WHITE)
  ImageDraw.Draw(ylab).text((2, 1), ylabel, fill=BLACK, font=small)
  ylab = ylab.rotate(90, expand=True)
  img.paste(ylab, (4, top + ph // 2 - ylab.size[1] // 2))
  # series
  legend = []
  for i, (label, xs, ys) in enumerate(series):
    color = PALETTE[i % len(PALETTE)]
    line = [(sx(float(x)), sy(math.log10(float(y)) if log_y else float(y)))
            for x, y in zip(xs, ys)
            if y is not None and math.isfinite(float(y)) and (not log_y or float(y) > 0)]
    if len(line) > 1:
      if label in dashed:
        for a, b in zip(line[:-1], line[1:]):
          _dashed_line(draw, a, b, color)
      else:
        draw.line(line, fill=color, width=2)
    if markers:
      for x, y in line:
        draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
    legend.append((label, color))
  _legend(draw, legend, width - 8, top, small)
  return img


def _dashed_line(draw, a, b, color, dash: float = 6.0):
  length = math.hypot(b[0] - a[0], b[1] - a[1])
  if length == 0:
    return
  n = max(int(length // dash), 1)
  for k in range(0, n, 2):
    t0, t1 = k / n, min((k + 1) / n, 1.0)
    draw.line([a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0,
               a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1], fill=color, width=2)


def _legend_width(labels, fnt) -> int:
  """Width of the legend box for ``labels`` (plus its margin to the plot)."""
  if not labels:
    return 0
  tmp = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  return max(_text_size(tmp, str(label), fnt)[0] for label in labels) + 30 + 12


def _legend(draw, entries, right_x, y, fnt):
  """A legend box whose right edge is at ``right_x``."""
  if not entries:
    return
  w = max(_text_size(draw, label, fnt)[0] for label, _ in entries) + 30
  h = 16 * len(entries) + 6
  x = right_x - w
  draw.rectangle([x, y, x + w, y + h], fill=WHITE, outline=GREY)
  for i, (label, color) in enumerate(entries):
    yy = y + 5 + 16 * i
    draw.rectangle([x + 6, yy + 3, x + 20, yy + 9], fill=color)
    draw.text((x + 25, yy - 1), label, fill=BLACK, font=fnt)


def bar_chart(categories, series, title: str, ylabel: str, size=(640, 400),
              reference: float | None = None, reference_label: str = "",
              xlabel: str = "") -> Image.Image:
  """Grouped bars: ``series`` is a list of ``(label, values)`` aligned with ``categories``.

  ``reference`` draws a dashed horizontal line (e.g. the value 1).
  """
  big, small = font(15), font(11)
  names = [s[0] for s in series] + ([reference_label] if reference_label else [])
  width, height = size[0] + _legend_width(names, small), size[1]
  left, right, top, bottom = 70, 20 + _legend_width(names, small), 40, 58
  img = Image.new("RGB", (width, height), WHITE)
  draw = ImageDraw.Draw(img)
  draw.text((left, 10), title, fill=BLACK, font=big)
  values = [float(v) for _, vs in series for v in vs if v is not None and math.isfinite(v)]
  if reference is not None:
    values.append(reference)
  if not values or not categories:
    draw.text((left, height // 2), "no data", fill=GREY, font=small)
    return img
  y0, y1 = min(0.0, min(values)), max(values)
  y1 = y1 + 0.08 * ((y1 - y0) or 1.0)
  pw, ph = width - left - right, height - top - bottom
  sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph
  for t in nice_ticks(y0, y1):
    y = sy(t)
    draw.line([left, y, left + pw, y], fill=LIGHT)
    text = _fmt(t)
    tw, th = _text_size(draw, text, small)
    draw.text((left - tw - 6, y - th // 2 - 1), text, fill=BLACK, font=small)
  group = pw / len(categories)
  bw = group * 0.8 / max(len(series), 1)
  legend = []
  for s, (label, vs) in enumerate(series):
    color = PALETTE[s % len(PALETTE)]
    legend.append((label, color))
    for c, v in enumerate(vs):
      if v is None or not math.isfinite(v):
        continue
      x = left + c * group + group * 0.1 + s * bw
      draw.rectangle([x, sy(max(v, 0.0)), x + bw - 1, sy(min(v, 0.0))], fill=color)
  for c, text in enumerate(categories):
    tw, _ = _text_size(draw, str(text), small)
    draw.text((left + c * group + group / 2 - tw / 2, top + ph + 6), str(text), fill=BLACK,
              font=small)
  if reference is not None:
    _dashed_line(draw, (left, sy(reference)), (left + pw, sy(reference)), GREY)
    if reference_label:
      legend.append((reference_label, GREY))
  draw.rectangle([left, top, left + pw, top + ph], outline=BLACK)
  if xlabel:
    tw, _ = _text_size(draw, xlabel, small)
    draw.text((left + pw // 2 - tw // 2, height - 22), xlabel, fill=BLACK, font=small)
  ylab = Image.new("RGB", (_text_size(draw, ylabel, small)[0] + 4, 16), WHITE)
  ImageDraw.Draw(ylab).text((2, 1), ylabel, fill=BLACK, font=small)
  ylab = ylab.rotate(90, expand=True)
  img.paste(ylab, (4, top + ph // 2 - ylab.size[1] // 2))
  _legend(draw, legend, width - 8, top, small)
  return img


def save(img: Image.Image, path: str) -> str:
  from mae_jax import viz
  viz.save_png(img, path)
  return path
