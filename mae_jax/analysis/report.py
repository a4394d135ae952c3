"""``report.md`` + ``analysis.json`` + PNGs from the results of ``mae_jax.analysis``.

``write(out_dir, runs, data, settings)``: ``runs`` is a list (one model, or two
side by side with ``--compare``) of ``{"label", "meta", "result"}`` where
``result`` is ``analyze_model``'s output; ``data`` maps a patch size to
``analyze_data``'s output. Each claim gets a short section: the statement as we
read it, the numbers, the plots, and a verdict from the rule printed next to it.
The rules are deliberately simple and stated, so a reader can disagree with them.
"""
from __future__ import annotations

import json
import math

import numpy as np

from mae_jax import fileio
from mae_jax import viz_analysis as va

PAPER = ("S. Cao, P. Xu, D. A. Clifton, *How to Understand Masked Autoencoders*, "
         "arXiv:2202.03670 (2022)")


# ------------------------------------------------------------------ JSON helpers


def to_jsonable(x):
  """NumPy/JAX values to plain JSON types; NaN/Inf become ``null``."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
    return to_jsonable(x.tolist())
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, (bool, int, str)) or x is None:
    return x
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return to_jsonable(x.item())
  return str(x)


def _mean(values) -> float:
  vals = [float(v) for v in np.ravel(np.asarray(values, np.float64)) if np.isfinite(v)]
  return float(np.mean(vals)) if vals else float("nan")


def _at(seq, i: int, default=None):
  """``seq[i]``, or ``default`` when a model has fewer layers than the other."""
  return seq[i] if i < len(seq) else default


def _closest(mapping: dict, ratio: float):
  keys = list(mapping)
  return keys[int(np.argmin([abs(float(k) - ratio) for k in keys]))]


# ---------------------------------------------------------------------- summary


def summarize(result: dict) -> dict:
  """Headline numbers of one model's ``analyze_model`` result."""
  att, st, it = result["attention"], result["stability"], result["interpolation"]
  enc, dec = att["encoder"], att["decoder"]
  s = {"loss": result["loss"]}
  s["encoder_mean_distance_px"] = _mean([e["mean_distance"] for e in enc])
  s["encoder_uniform_distance_px"] = _mean([e["uniform_mean_distance"] for e in enc])
  s["encoder_entropy_ratio"] = _mean([np.mean(e["entropy"]) / e["uniform_entropy"]
                                      for e in enc])
  s["encoder_kernel_r2"] = _mean([e["kernel_r2"] for e in enc])
  s["attention_locality_min"] = min(
      [float(np.min(np.asarray(e["mean_distance"]) / e["uniform_mean_distance"]))
       for e in enc] +
      [float(np.min(np.asarray(e["mask_queries"]["mean_distance"]) /
                    e["mask_queries"]["uniform_mean_distance"])) for e in dec],
      default=float("nan"))
  s["encoder_kernel_r2_best_layer"] = max(
      [_mean(e["kernel_r2"]) for e in enc], default=float("nan"))
  s["decoder_mask_query_distance_px"] = _mean([e["mask_queries"]["mean_distance"]
                                               for e in dec])
  s["decoder_visible_query_distance_px"] = _mean([e["visible_queries"]["mean_distance"]
                                                  for e in dec])
  s["decoder_uniform_distance_px"] = _mean([e["mask_queries"]["uniform_mean_distance"]
                                            for e in dec])
  s["decoder_kernel_r2"] = _mean([e["kernel_r2"] for e in dec])
  s["decoder_kernel_r2_best_layer"] = max(
      [_mean(e["kernel_r2"]) for e in dec], default=float("nan"))
  s["decoder_mask_to_visible_share"] = _mean([e["mask_to_visible_share"] for e in dec])
  s["decoder_visible_fraction"] = _mean([e["visible_fraction"] for e in dec])
  for part in ("encoder", "decoder"):
    s[f"{part}_relative_change"] = _mean(st[part]["relative_change"])
    s[f"{part}_cosine"] = _mean(st[part]["cosine"])
  s["lipschitz_jacobian_max"] = max(st["encoder"].get("lipschitz_jacobian_max", []) +
                                    st["decoder"].get("lipschitz_jacobian_max", []),
                                    default=float("nan"))
  s["lipschitz_random_max"] = max(st["encoder"].get("lipschitz_random_max", []) +
                                  st["decoder"].get("lipschitz_random_max", []),
                                  default=float("nan"))
  inf = it["influence"]
  for key in ("far_share", "far_share_uniform", "nearest_share", "mean_distance_weighted",
              "mean_distance_uniform"):
    s[f"influence_{key}"] = inf[key]
  mi = np.asarray(inf["mean_influence"], np.float64)
  counts = np.asarray(inf["pair_counts"], np.float64)
  overall = (mi * counts).sum() / max(counts.sum(), 1.0)
  # influence per visible patch at distance 1 and at the largest distance, relative
  # to the mean over all pairs (1 = distance-blind)
  s["influence_relative_nearest"] = float(mi[0] / overall) if mi.size and overall else None
  s["influence_relative_farthest"] = float(mi[-1] / overall) if mi.size and overall else None
  rec = it["reconstruction"]
  for key in ("model", "nearest_copy", "diffusion", "mean_fill"):
    s[f"mse_{key}"] = rec[key]
  return s


def summarize_data(data: dict, mask_ratio: float) -> dict:
  d, null = data["data"], data["null_shuffled"]
  s = {"patch_matrix_shape": d["shape"], "effective_rank": d["effective_rank"],
       "effective_rank_null": null["effective_rank"],
       "effective_rank_pooled": d["effective_rank_pooled"],
       "effective_rank_pooled_null": null["effective_rank_pooled"],
       "numerical_rank": d["numerical_rank"]}
  for k, v in d["energy_topk"].items():
    s[f"energy_top{k}"] = v
    s[f"energy_top{k}_null"] = null["energy_topk"][k]
  ratio = _closest(data["completion"], mask_ratio)
  curve = data["completion"][ratio]
  s["completion_ratio"] = float(ratio)
  s["completion_mse_rank0"] = curve["0"]
  s["completion_mse_full"] = curve["full"]
  s["completion_rank_for_90pct"] = rank_for_gain(curve, 0.9)
  return s


def rank_for_gain(curve: dict, fraction: float):
  """Smallest listed rank reaching ``fraction`` of the rank-0 -> full error reduction."""
  base, full = curve["0"], curve["full"]
  gain = base - full
  if not gain > 0:
    return None
  for k, v in curve.items():
    if k != "full" and base - v >= fraction * gain:
      return int(k)
  return "full"


# ---------------------------------------------------------------------- verdicts


def verdict_kernel(s: dict) -> tuple[str, str]:
  best = max(s["encoder_kernel_r2_best_layer"], s["decoder_kernel_r2_best_layer"])
  local = s["attention_locality_min"]
  rule = ("rule: *supported* (a learned, position-structured kernel) if in some layer "
          "displacement explains >= 30% of the attention-weight variance (mean over "
          "heads) or some head's mean attention distance is <= 0.7x that of uniform "
          "attention; *partly* at >= 20% or <= 0.85x; otherwise *not supported*. "
          "A randomly initialised tiny model gives about 10% and 0.95-1.0x")
  if best >= 0.3 or local <= 0.7:
    return "supported", rule
  if best >= 0.2 or local <= 0.85:
    return "partly supported", rule
  return "not supported", rule


def verdict_stability(s: dict) -> tuple[str, str]:
  cos = min(s["encoder_cosine"], s["decoder_cosine"])
  rel = max(s["encoder_relative_change"], s["decoder_relative_change"])
  lip = s["lipschitz_jacobian_max"]
  rule = ("rule: *supported* if the mean cosine between consecutive layers is >= 0.9, "
          "the mean relative change <= 0.5 and every block's Jacobian norm <= 10; "
          "*partly* if two of the three hold")
  ok = [cos >= 0.9, rel <= 0.5, lip <= 10]
  if all(ok):
    return "supported", rule
  if sum(ok) == 2:
    return "partly supported", rule
  return "not supported", rule


def verdict_low_rank(d: dict) -> tuple[str, str]:
  rank = d["completion_rank_for_90pct"]
  low = d["effective_rank"] <= 0.6 * d["effective_rank_null"]
  small = isinstance(rank, int) and rank <= 16
  rule = ("rule: *supported* if the patch matrices' effective rank is <= 0.6x that of "
          "pixel-shuffled images and a rank <= 16 linear completion reaches 90% of the "
          "full-rank error reduction; *partly* if one holds")
  if low and small:
    return "supported", rule
  if low or small:
    return "partly supported", rule
  return "not supported", rule


def verdict_interpolation(s: dict) -> tuple[str, str]:
  far = s["influence_far_share"] >= 0.5
  beats = s["mse_model"] < min(s["mse_nearest_copy"], s["mse_diffusion"])
  rule = ("rule: *supported* if >= 50% of a masked patch's influence comes from "
          "beyond its 8 neighbours AND the model beats both local baselines "
          "(nearest-patch copy, diffusion); *not supported* if the influence is mostly "
          "local (< 50%); *inconclusive* if it is spread out but the model does not beat "
          "the local baselines (e.g. an untrained model, whose influence is "
          "distance-blind)")
  if not far:
    return "not supported", rule
  if beats:
    return "supported", rule
  return "inconclusive", rule


# ---------------------------------------------------------------------- plots


def _layer_labels(result):
  enc = [f"E{e['layer']}" for e in result["attention"]["encoder"]]
  dec = [f"D{e['layer']}" for e in result["attention"]["decoder"]]
  return enc, dec


def _suffix(i: int, runs) -> str:
  return "" if i == 0 else f"_{_slug(runs[i]['label'])}"


def _slug(text: str) -> str:
  out = "".join(c if c.isalnum() else "_" for c in str(text)).strip("_")
  return out or "model"


def plot_all(out_dir: str, runs, data) -> dict:
  """Writes every PNG; returns ``{key: [file names]}``."""
  files: dict = {}

  def save(key, img, name):
    va.save(img, fileio.join(out_dir, name))
    files.setdefault(key, []).append(name)

  for i, run in enumerate(runs):
    res, sfx, label = run["result"], _suffix(i, runs), run["label"]
    att = res["attention"]
    for key, layers, pick, what in (
        ("kernels_encoder", att["encoder"], lambda e: e, "encoder, all queries"),
        ("kernels_decoder_mask", att["decoder"], lambda e: e["mask_queries"],
         "decoder, mask-token queries"),
        ("kernels_decoder_visible", att["decoder"], lambda e: e["visible_queries"],
         "decoder, visible-token queries")):
      if not layers:
        continue
      panels = np.stack([pick(e)["kernel"] for e in layers])
      heads = panels.shape[1]
      img = va.heatmap_grid(
          panels, [f"layer {e['layer']}" for e in layers], [f"head {h}" for h in range(heads)],
          f"Attention weight vs displacement ({what}) - {label}",
          subtitle="centre = same patch; right/down = key right of/below query; "
                   "each panel scaled to its max; grey = no pair")
      save(key, img, f"attention_{key}{sfx}.png")

  enc_labels, dec_labels = _layer_labels(runs[0]["result"])
  labels = enc_labels + dec_labels
  xt = {i: t for i, t in enumerate(labels)}
  series, ref = [], None
  for run in runs:
    att = run["result"]["attention"]
    ys = [float(np.mean(e["mean_distance"])) for e in att["encoder"]]
    ys += [float(np.mean(e["mask_queries"]["mean_distance"])) for e in att["decoder"]]
    series.append((f"{run['label']}", list(range(len(ys))), ys))
    if ref is None:
      ref = ("uniform attention", list(range(len(ys))),
             [e["uniform_mean_distance"] for e in att["encoder"]] +
             [e["mask_queries"]["uniform_mean_distance"] for e in att["decoder"]])
  save("attention_distance", va.line_chart(
      series + [ref], "Mean attention distance (decoder: mask-token queries)",
      "layer (E = encoder, D = decoder)", "pixels", xtick_labels=xt,
      dashed=("uniform attention",)), "attention_distance.png")
  series = []
  for run in runs:
    att = run["result"]["attention"]
    ys = [_mean(e["kernel_r2"]) for e in att["encoder"] + att["decoder"]]
    series.append((run["label"], list(range(len(ys))), ys))
  save("attention_r2", va.line_chart(
      series, "Share of attention variance explained by displacement (R^2)",
      "layer (E = encoder, D = decoder)", "R^2 (mean over heads)", xtick_labels=xt),
      "attention_r2.png")

  series = []
  for run in runs:
    st = run["result"]["stability"]
    ys = st["encoder"]["relative_change"] + st["decoder"]["relative_change"]
    series.append((f"{run['label']}: ||h'-h||/||h||", list(range(len(ys))), ys))
    ys = st["encoder"]["cosine"] + st["decoder"]["cosine"]
    series.append((f"{run['label']}: cosine(h, h')", list(range(len(ys))), ys))
  save("stability", va.line_chart(
      series, "Change across each block (per token, mean)", "block (E = encoder, D = decoder)",
      "ratio / cosine", xtick_labels=xt), "stability.png")
  bars = []
  for run in runs:
    st = run["result"]["stability"]
    bars.append((f"{run['label']}: Jacobian norm (max)",
                 st["encoder"].get("lipschitz_jacobian_max", []) +
                 st["decoder"].get("lipschitz_jacobian_max", [])))
    bars.append((f"{run['label']}: random dir. (max)",
                 st["encoder"].get("lipschitz_random_max", []) +
                 st["decoder"].get("lipschitz_random_max", [])))
  save("lipschitz", va.bar_chart(labels, bars, "Empirical Lipschitz constant per block",
                                 "||f(x+d)-f(x)|| / ||d||", reference=1.0,
                                 reference_label="1 (non-expansive)", xlabel="block"),
       "lipschitz.png")

  for ps, d in data.items():
    sfx = "" if len(data) == 1 else f"_p{ps}"
    s_data = np.asarray(d["data"]["mean_singular_values"], np.float64)
    s_null = np.asarray(d["null_shuffled"]["mean_singular_values"], np.float64)
    p_data = np.asarray(d["data"]["pooled_singular_values"], np.float64)
    p_null = np.asarray(d["null_shuffled"]["pooled_singular_values"], np.float64)
    norm = lambda s: (s / s[0]).tolist() if s.size and s[0] > 0 else s.tolist()
    idx = list(range(1, len(s_data) + 1))
    save("spectrum", va.line_chart(
        [("images, per image", idx, norm(s_data)), ("shuffled pixels, per image", idx,
                                                    norm(s_null)),
         ("images, pooled", list(range(1, len(p_data) + 1)), norm(p_data)),
         ("shuffled, pooled", list(range(1, len(p_null) + 1)), norm(p_null))],
        f"Singular values of the patch matrix ({d['data']['shape'][0]} x "
        f"{d['data']['shape'][1]})", "index i", "s_i / s_1", log_y=True,
        dashed=("shuffled pixels, per image", "shuffled, pooled")), f"spectrum{sfx}.png")
    comp = d["completion"]
    ratios = [float(r) for r in comp]
    ranks = [k for k in next(iter(comp.values())) if k != "full"]
    series = [(f"mask {float(r):.2f}", list(range(len(ranks) + 1)),
               [comp[r][k] for k in ranks] + [comp[r]["full"]]) for r in comp]
    xt_rank = {i: k for i, k in enumerate(ranks + ["full"])}
    save("completion_rank", va.line_chart(
        series, "Rank-k linear completion of masked patches (held-out MSE)",
        "rank k of the linear map", "MSE per masked pixel", xtick_labels=xt_rank),
        f"completion_rank{sfx}.png")

  series = []
  d0 = data[runs[0]["result"]["patch_size"]]
  comp = d0["completion"]
  cr = [float(r) for r in comp]
  series.append(("linear, full rank", cr, [comp[r]["full"] for r in comp]))
  if "8" in next(iter(comp.values())):
    series.append(("linear, rank 8", cr, [comp[r]["8"] for r in comp]))
  for run in runs:
    vr = run["result"]["interpolation"]["reconstruction_vs_ratio"]
    series.append((f"{run['label']}", [float(r) for r in vr], [vr[r]["model"] for r in vr]))
  vr = runs[0]["result"]["interpolation"]["reconstruction_vs_ratio"]
  rs = [float(r) for r in vr]
  for key, name in (("nearest_copy", "nearest-patch copy"), ("diffusion", "diffusion"),
                    ("mean_fill", "mean fill")):
    series.append((name, rs, [vr[r][key] for r in vr]))
  save("reconstruction", va.line_chart(
      series, "Masked-patch reconstruction error vs mask ratio", "mask ratio",
      "MSE per masked pixel (normalised)",
      dashed=("nearest-patch copy", "diffusion", "mean fill")), "reconstruction.png")

  series = []
  for run in runs:
    inf = run["result"]["interpolation"]["influence"]
    mi = np.asarray(inf["mean_influence"], np.float64)
    counts = np.asarray(inf["pair_counts"], np.float64)
    overall = (mi * counts).sum() / max(counts.sum(), 1)
    series.append((run["label"], inf["distances"], (mi / overall).tolist()
                   if overall > 0 else mi.tolist()))
  dist = runs[0]["result"]["interpolation"]["influence"]["distances"]
  series.append(("distance-blind", dist, [1.0] * len(dist)))
  save("influence", va.line_chart(
      series, "Influence of a visible patch on a masked patch's prediction",
      "distance between patch centres (patches)",
      "mean ||d pred_m / d x_v||_F (relative)", dashed=("distance-blind",)),
      "influence_distance.png")
  return files


# ---------------------------------------------------------------------- markdown


def _f(v, digits: int = 3) -> str:
  if v is None:
    return "-"
  if isinstance(v, str):
    return v
  if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
    return str(v)
  v = float(v)
  if not math.isfinite(v):
    return "-"
  if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
    return f"{v:.2e}"
  return f"{v:.{digits}g}"


def _joined(values, digits: int = 3) -> str:
  return " / ".join(_f(v, digits) for v in values)


def _table(header, rows) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return out


def _images(files, key, runs) -> list[str]:
  names = files.get(key, [])
  return [f"![{key}]({name})" for name in names]


def markdown(runs, data, files, settings, summaries, data_summaries) -> str:
  labels = [r["label"] for r in runs]
  who = " / ".join(labels)
  lines = [f"# MAE analysis: {who}", "",
           f"Measurements of the claims of {PAPER}, on the models below. Every number "
           "is an estimate on the images listed; methods and caveats are in "
           "`docs/analysis.md`. Verdicts follow the rule printed with them.", ""]
  rows = []
  for r, s in zip(runs, summaries):
    m = r["meta"]
    rows.append([r["label"], m.get("workdir", "-"), m.get("step", "-"), m.get("model", "-"),
                 f"{m.get('split', '-')} ({r['result']['num_images']} images)",
                 _f(r["result"]["mask_ratio"]), _f(s["loss"], 4)])
  lines += _table(["model", "workdir", "step", "architecture", "images", "mask ratio",
                   "masked-patch loss"], rows)
  lines += ["", f"Settings: seed {settings.seed}; influence Jacobians on "
            f"{settings.jacobian_images} images; Lipschitz on {settings.lipschitz_images}; "
            f"linear completion fitted on {settings.num_train} training images; mask ratios "
            f"{', '.join(str(r) for r in settings.mask_ratios)}.", ""]
  if len(runs) > 1:
    lines += [f"Two models side by side: cells read `{who}`.", ""]

  # ---- 1
  lines += ["## 1. Attention is a learned integral kernel over the patches", "",
            "**Statement.** Patch attention acts as an integral operator whose kernel is "
            "learned; as a function of position it should show structure (locality, "
            "direction) rather than be flat.", "",
            "**Method.** Weights of every head averaged over all (query, key) patch pairs "
            "with the same displacement (cls excluded); mean attention distance in pixels "
            "(ViT's metric) against uniform attention over the same tokens; row entropy "
            "relative to uniform; R^2 = share of weight variance explained by "
            "displacement alone. The encoder sees the visible patches of a "
            f"{_f(runs[0]['result']['mask_ratio'])}-masked image, as in pretraining.", ""]
  rows = []
  nan = float("nan")
  n_enc = max(len(r["result"]["attention"]["encoder"]) for r in runs)
  n_dec = max(len(r["result"]["attention"]["decoder"]) for r in runs)
  for l in range(n_enc):
    es = [_at(r["result"]["attention"]["encoder"], l) for r in runs]
    pick = lambda fn: _joined([fn(e) if e is not None else nan for e in es])
    rows.append([f"E{l}", pick(lambda e: _mean(e["mean_distance"])),
                 pick(lambda e: e["uniform_mean_distance"]),
                 pick(lambda e: _mean(e["entropy"]) / e["uniform_entropy"]),
                 pick(lambda e: _mean(e["kernel_r2"])), pick(lambda e: _mean(e["cls_share"])),
                 "-"])
  for l in range(n_dec):
    ds = [_at(r["result"]["attention"]["decoder"], l) for r in runs]
    pick = lambda fn: _joined([fn(d) if d is not None else nan for d in ds])
    for kind, name in (("mask_queries", "mask q."), ("visible_queries", "visible q.")):
      share = "-"
      if kind == "mask_queries":
        share = (pick(lambda d: _mean(d["mask_to_visible_share"])) +
                 f" (uniform {_f(next(d for d in ds if d is not None)['visible_fraction'])})")
      rows.append([f"D{l} {name}", pick(lambda d: _mean(d[kind]["mean_distance"])),
                   pick(lambda d: d[kind]["uniform_mean_distance"]),
                   pick(lambda d: _mean(d[kind]["entropy"]) / d[kind]["uniform_entropy"]),
                   pick(lambda d: _mean(d[kind]["kernel_r2"])),
                   pick(lambda d: _mean(d[kind]["cls_share"])), share])
  lines += _table(["layer", "mean distance px", "uniform px", "entropy / uniform",
                   "displacement R^2", "cls share", "mask->visible share"], rows)
  lines += [""] + _images(files, "kernels_encoder", runs) + \
      _images(files, "kernels_decoder_mask", runs) + \
      _images(files, "kernels_decoder_visible", runs) + \
      _images(files, "attention_distance", runs) + _images(files, "attention_r2", runs) + [""]
  lines += _verdicts(runs, summaries, verdict_kernel, lambda s: (
      f"best-layer displacement R^2 "
      f"{_f(max(s['encoder_kernel_r2_best_layer'], s['decoder_kernel_r2_best_layer']))}; "
      f"most local head at {_f(s['attention_locality_min'])}x the uniform distance; "
      f"encoder attention distance {_f(s['encoder_mean_distance_px'])} px vs "
      f"{_f(s['encoder_uniform_distance_px'])} px uniform; decoder mask queries "
      f"{_f(s['decoder_mask_query_distance_px'])} px vs {_f(s['decoder_uniform_distance_px'])} px"))

  # ---- 2
  lines += ["## 2. Representations are stable across layers", "",
            "**Statement.** Each block changes the token representations only a little "
            "and is Lipschitz-continuous with a moderate constant, so the representation "
            "is stable from layer to layer and under small input perturbations.", "",
            "**Method.** Per block: mean over tokens of ||h_out - h_in|| / ||h_in|| and of "
            "cosine(h_in, h_out), token-norm growth; empirical Lipschitz constant "
            "||f(x+d) - f(x)|| / ||d|| for random d on the patch tokens (cls, a learned "
            "constant, held fixed) with ||d|| = 1e-3 ||x|| and the Jacobian's spectral "
            "norm by power iteration (both max over images; lower bounds of the true "
            "constant).", ""]
  rows = []
  for part, prefix in (("encoder", "E"), ("decoder", "D")):
    st = [r["result"]["stability"][part] for r in runs]
    for l in range(max(len(x["relative_change"]) for x in st)):
      col = lambda key: _joined([_at(x.get(key, []), l, float("nan")) for x in st])
      rows.append([f"{prefix}{l}", col("relative_change"), col("cosine"), col("norm_growth"),
                   col("lipschitz_random_max"), col("lipschitz_jacobian_max"),
                   col("lipschitz_jacobian_mean")])
  lines += _table(["block", "relative change", "cosine", "norm growth",
                   "Lipschitz (random, max)", "Jacobian norm (max)", "Jacobian norm (mean)"],
                  rows)
  lines += [""] + _images(files, "stability", runs) + _images(files, "lipschitz", runs) + [""]
  lines += _verdicts(runs, summaries, verdict_stability, lambda s: (
      f"mean cosine encoder {_f(s['encoder_cosine'])}, decoder {_f(s['decoder_cosine'])}; "
      f"relative change encoder {_f(s['encoder_relative_change'])}, decoder "
      f"{_f(s['decoder_relative_change'])}; largest Jacobian norm "
      f"{_f(s['lipschitz_jacobian_max'])}"))

  # ---- 3
  lines += ["## 3. Image patches are low rank", "",
            "**Statement.** The patch matrix of an image (patches x pixels) is "
            "approximately low rank, which is why a few visible patches determine the "
            "masked ones.", "",
            "**Method.** Singular values of each image's patch matrix (model input space) "
            "and of all patches pooled; effective rank (Roy & Vetterli); the same for the "
            "images with their pixels shuffled (no spatial structure). Completion: for a "
            "fixed random mask pattern, the best affine map of rank <= k from visible to "
            "masked pixels, fitted on training images, evaluated on the analysed images "
            "(3 patterns per ratio). This is model-free: it depends on the data only.", ""]
  for ps, d in data.items():
    ds = data_summaries[ps]
    dd, null = d["data"], d["null_shuffled"]
    rows = [["effective rank (per image)", _f(dd["effective_rank"]),
             _f(null["effective_rank"])],
            ["effective rank (pooled)", _f(dd["effective_rank_pooled"]),
             _f(null["effective_rank_pooled"])],
            ["numerical rank (per image)", _f(dd["numerical_rank"]),
             _f(null["numerical_rank"])]]
    rows += [[f"energy in top {k} (per image)", _f(v), _f(null["energy_topk"][k])]
             for k, v in dd["energy_topk"].items()]
    lines += [f"Patch size {ps}: patch matrix {dd['shape'][0]} x {dd['shape'][1]}, "
              f"{d['num_test']} images.", ""]
    lines += _table(["statistic", "images", "pixel-shuffled"], rows) + [""]
    comp = d["completion"]
    ranks = list(next(iter(comp.values())))
    rows = [[_f(float(r))] + [_f(comp[r][k], 3) for k in ranks] for r in comp]
    lines += ["Held-out MSE per masked pixel of the rank-k linear completion:", ""]
    lines += _table(["mask ratio"] + [f"k={k}" for k in ranks], rows) + [""]
  lines += _images(files, "spectrum", runs) + _images(files, "completion_rank", runs) + [""]
  for ps, ds in data_summaries.items():
    verdict, rule = verdict_low_rank(ds)
    lines += [f"**Verdict (data, patch {ps}): {verdict}.** Effective rank "
              f"{_f(ds['effective_rank'])} vs {_f(ds['effective_rank_null'])} shuffled; at "
              f"mask ratio {_f(ds['completion_ratio'])} a rank "
              f"{_f(ds['completion_rank_for_90pct'])} linear map gets 90% of the full-rank "
              f"gain (MSE {_f(ds['completion_mse_rank0'])} -> "
              f"{_f(ds['completion_mse_full'])}).", "",
              f"_{rule[0].upper() + rule[1:]}._", ""]

  # ---- 4
  lines += ["## 4. Masked patches are filled by global, not local, interpolation", "",
            "**Statement.** The decoder reconstructs a masked patch from visible patches "
            "all over the image (an interpolation with a learned global kernel), not just "
            "from its neighbours.", "",
            "**Method.** Exact Jacobian of the masked-patch predictions with respect to "
            "the visible patches' pixels (fixed masks); influence = Frobenius norm of each "
            "(masked, visible) block. Far share = influence from visible patches outside "
            "the 8 neighbours (Chebyshev distance > 1); the distance-blind reference is "
            "the share of visible patches that are that far. Reconstruction error of the "
            "model against nearest-patch copy, diffusion (harmonic) inpainting and the "
            "visible mean, on the same masks. The plot adds the linear completion of "
            "section 3, which is a specialist: fitted separately for each fixed mask "
            "pattern, whereas the model serves every pattern with one set of weights.", ""]
  rows = []
  for key, name in (("influence_far_share", "far share (beyond 8 neighbours)"),
                    ("influence_far_share_uniform", "far share if distance-blind"),
                    ("influence_nearest_share", "share of the nearest visible patch"),
                    ("influence_mean_distance_weighted", "influence-weighted distance (patches)"),
                    ("influence_mean_distance_uniform", "distance-blind distance (patches)"),
                    ("mse_model", "MSE model"), ("mse_nearest_copy", "MSE nearest-patch copy"),
                    ("mse_diffusion", "MSE diffusion inpainting"),
                    ("mse_mean_fill", "MSE visible-mean fill")):
    rows.append([name, _joined([s[key] for s in summaries])])
  lines += _table(["quantity", who], rows) + [""]
  vr = runs[0]["result"]["interpolation"]["reconstruction_vs_ratio"]
  rows = []
  for r in vr:
    rows.append([_f(float(r))] + [_f(run["result"]["interpolation"]
                                     ["reconstruction_vs_ratio"][r]["model"])
                                  for run in runs] +
                [_f(vr[r][k]) for k in ("nearest_copy", "diffusion", "mean_fill")])
  lines += ["Masked-pixel MSE versus mask ratio (model re-run at each ratio):", ""]
  lines += _table(["mask ratio"] + labels + ["nearest copy", "diffusion", "mean fill"], rows)
  lines += [""] + _images(files, "influence", runs) + _images(files, "reconstruction", runs)
  lines += [""]
  if any(r["result"]["interpolation"]["norm_pix_loss"] for r in runs):
    lines += ["_Note: a model trained with norm_pix_loss predicts per-patch normalised "
              "pixels; its predictions were mapped back with the true patch mean and "
              "variance, which the baselines do not get._", ""]
  lines += _verdicts(runs, summaries, verdict_interpolation, lambda s: (
      f"far share {_f(s['influence_far_share'])} (distance-blind "
      f"{_f(s['influence_far_share_uniform'])}); influence per visible patch "
      f"{_f(s['influence_relative_nearest'])}x the mean at distance 1, "
      f"{_f(s['influence_relative_farthest'])}x at the largest distance; "
      f"MSE model {_f(s['mse_model'])} vs nearest copy {_f(s['mse_nearest_copy'])}, "
      f"diffusion {_f(s['mse_diffusion'])}"))
  lines += ["## Caveats", "",
            "- Small evaluation sets: the numbers are estimates; rerun with another "
            "`--seed` to see their spread.",
            "- The Lipschitz numbers are lower bounds found near the data, not certified "
            "constants.",
            "- Verdict thresholds are conventions of this report, not of the paper, which "
            "makes qualitative claims.", ""]
  return "\n".join(lines)


def _verdicts(runs, summaries, rule_fn, detail_fn) -> list[str]:
  out, rule = [], ""
  for run, s in zip(runs, summaries):
    verdict, rule = rule_fn(s)
    out += [f"**Verdict ({run['label']}): {verdict}.** {detail_fn(s)}.", ""]
  return out + [f"_{rule[0].upper() + rule[1:]}._", ""]


# ---------------------------------------------------------------------- writer


def write(out_dir: str, runs, data: dict, settings) -> dict:
  """Writes ``report.md``, ``analysis.json`` and the PNGs; returns the summaries."""
  fileio.makedirs(out_dir)
  summaries = [summarize(r["result"]) for r in runs]
  data_summaries = {ps: summarize_data(d, runs[0]["result"]["mask_ratio"])
                    for ps, d in data.items()}
  files = plot_all(out_dir, runs, data)
  text = markdown(runs, data, files, settings, summaries, data_summaries)
  fileio.write_text(fileio.join(out_dir, "report.md"), text)
  verdicts = []
  for run, s in zip(runs, summaries):
    verdicts.append({"label": run["label"],
                     "attention_kernel": verdict_kernel(s)[0],
                     "stability": verdict_stability(s)[0],
                     "global_interpolation": verdict_interpolation(s)[0]})
  payload = {
      "paper": PAPER,
      "settings": dict(vars(settings)) if not hasattr(settings, "__dataclass_fields__")
      else {k: getattr(settings, k) for k in settings.__dataclass_fields__},
      "models": [{"label": r["label"], "meta": r["meta"], "summary": s, "verdicts": v,
                  "result": r["result"]} for r, s, v in zip(runs, summaries, verdicts)],
      "data": {str(ps): {"summary": data_summaries[ps],
                         "verdict_low_rank": verdict_low_rank(data_summaries[ps])[0],
                         "result": d} for ps, d in data.items()},
      "files": files,
  }
  fileio.write_text(fileio.join(out_dir, "analysis.json"),
                    json.dumps(to_jsonable(payload), indent=1, allow_nan=False))
  return {"summaries": summaries, "data_summaries": data_summaries, "files": files}
