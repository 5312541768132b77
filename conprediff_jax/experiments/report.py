"""A sweep's results as tables (Markdown), paired differences with intervals (JSON) and a plot (PNG, drawn with
PIL). No flags here: importable from anywhere.

`results` is {"baseline": arm, "compare": {arm: the arm it is compared with, where not the baseline},
"arms": {arm: its overrides}, "protocol": overrides shared by every run,
"runs": {arm: [{"seed", "settings", "train_seconds", <metrics>...}, ...]}}.
"""

import math

import numpy as np

# The metrics reported, where present, with their names and which way is better.
METRICS = {"fd_digits": ("FD-digits", "lower"), "kid_digits": ("KID-digits", "lower"),
           "precision_digits": ("precision", "higher"), "recall_digits": ("recall", "higher"),
           "class_accuracy": ("class accuracy", "higher"), "fid": ("FID", "lower"),
           "reconstruction_mse": ("reconstruction MSE", "lower")}
CONFIDENCE = 0.95


def _metrics(results) -> list[str]:
  first = next(iter(results["runs"].values()))[0]
  return [m for m in METRICS if m in first]


def interval(values) -> tuple[float, float, float]:
  """(mean, low, high): the mean and its two-sided 95% Student-t interval; (mean, nan, nan) for one value."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, math.nan, math.nan
  half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
  return mean, mean - half, mean + half


def baseline_of(results, arm: str) -> str:
  """The arm `arm` is compared with: its own (the spec's [compare] table), or the sweep's baseline."""
  return results.get("compare", {}).get(arm, results["baseline"])


def differences(results) -> dict:
  """{arm: {metric: {"mean", "low", "high", "per_seed", "seeds"}}}: arm minus its baseline on the seeds both have."""
  out = {}
  for arm, runs in results["runs"].items():
    if arm == results["baseline"] or baseline_of(results, arm) not in results["runs"]:
      continue
    base = {r["seed"]: r for r in results["runs"][baseline_of(results, arm)]}
    paired = [(r, base[r["seed"]]) for r in runs if r["seed"] in base]
    if not paired:
      continue
    out[arm] = {}
    for m in _metrics(results):
      diffs = [a[m] - b[m] for a, b in paired]
      mean, low, high = interval(diffs)
      out[arm][m] = {"mean": mean, "low": low, "high": high, "per_seed": diffs, "seeds": [a["seed"] for a, _ in paired]}
  return out


def markdown(results, title: str) -> str:
  metrics = _metrics(results)
  runs = results["runs"]
  seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
  protocol = ", ".join(f"{k}={v}" for k, v in results.get("protocol", {}).items()) or "the config's own"
  lines = [f"## {title}", "", f"Seeds {seeds}; every run: {protocol}. Paired differences are an arm minus its "
           f"baseline ({results['baseline']!r} unless named) on the same seed: mean and {CONFIDENCE:.0%} t-interval "
           "over seeds.", "",
           "| arm | overrides | seeds | " + " | ".join(f"{METRICS[m][0]} ({METRICS[m][1]} is better)" for m in metrics)
           + " | FD-digits per seed | train s |", "|---|---|---|" + "---|" * len(metrics) + "---|---|"]
  for arm, rs in runs.items():
    cells = []
    for m in metrics:
      v = np.array([r[m] for r in rs])
      cells.append(f"{v.mean():.4g} ± {v.std(ddof=1):.2g}" if len(v) > 1 else f"{v.mean():.4g}")
    fd = ", ".join(f"{r['fd_digits']:.2f}" for r in rs) if "fd_digits" in metrics else "-"
    overrides = ", ".join(f"{k}={v}" for k, v in results.get("arms", {}).get(arm, {}).items()) or "-"
    lines.append(f"| {arm} | {overrides} | {len(rs)} | " + " | ".join(cells) + f" | {fd} | {np.mean([r['train_seconds'] for r in rs]):.0f} |")
  diffs = differences(results)
  if diffs:
    lines += ["", "Paired differences, arm minus the arm it is compared with:", "",
              "| arm | against | pairs | " + " | ".join(f"Δ {METRICS[m][0]}" for m in metrics) + " |",
              "|---|---|---|" + "---|" * len(metrics)]
    for arm, d in diffs.items():
      cells = []
      for m in metrics:
        x = d[m]
        ci = f" [{x['low']:+.3g}, {x['high']:+.3g}]" if math.isfinite(x["low"]) else ""
        cells.append(f"{x['mean']:+.3g}{ci}")
      lines.append(f"| {arm} | {baseline_of(results, arm)} | {len(d[metrics[0]]['seeds'])} | " + " | ".join(cells)
                   + " |")
  return "\n".join(lines)


def plot(results, path: str, metric: str = "fd_digits", size=(760, None), margin=190) -> None:
  """Each arm's paired difference in `metric` from the baseline: the per-seed differences as dots, the mean as a
  bar, its 95% interval as a line; zero (no difference) dashed."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  diffs = {arm: d[metric] for arm, d in differences(results).items() if metric in d}
  if not diffs:
    return
  row = 28
  width, height = size[0], size[1] or row * len(diffs) + 70
  values = [v for d in diffs.values() for v in d["per_seed"] + [d["low"], d["high"]] if math.isfinite(v)] + [0.0]
  lo, hi = min(values), max(values)
  pad = 0.05 * (hi - lo or 1.0)
  lo, hi = lo - pad, hi + pad
  sx = lambda v: margin + (v - lo) / (hi - lo) * (width - margin - 20)
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  top = 30
  draw.text((10, 8), f"{METRICS.get(metric, (metric,))[0]}: arm minus its baseline ({results['baseline']} unless "
                     f"named), same seed, {CONFIDENCE:.0%} t-interval", fill="black")
  for y in range(top - 5, top + row * len(diffs), 6):  # zero, dashed
    draw.line([(sx(0.0), y), (sx(0.0), y + 3)], fill="gray")
  for i, (arm, d) in enumerate(diffs.items()):
    y = top + row * i + row // 2
    label = arm if baseline_of(results, arm) == results["baseline"] else f"{arm} - {baseline_of(results, arm)}"
    draw.text((10, y - 6), label[:30], fill="black")
    if math.isfinite(d["low"]):
      draw.line([(sx(d["low"]), y), (sx(d["high"]), y)], fill="steelblue", width=2)
    draw.line([(sx(d["mean"]), y - 8), (sx(d["mean"]), y + 8)], fill="steelblue", width=3)
    for v in d["per_seed"]:
      draw.ellipse([sx(v) - 3, y - 3, sx(v) + 3, y + 3], outline="black")
  axis = top + row * len(diffs) + 8
  draw.line([(sx(lo), axis), (sx(hi), axis)], fill="black")
  for v in np.linspace(lo, hi, 5):
    draw.line([(sx(v), axis), (sx(v), axis + 4)], fill="black")
    draw.text((sx(v) - 14, axis + 8), f"{v:+.2f}", fill="black")
  image.save(path)
