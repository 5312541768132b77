"""The ablation's results as a markdown table (no flags here: importable from anywhere)."""

import numpy as np


def table(results: dict[str, list[dict]], steps: int) -> str:
  """FD-digits per arm, and class accuracy beside it for a class-conditional config."""
  metrics = [m for m in ("fd_digits", "class_accuracy") if m in next(iter(results.values()))[0]]
  names = {"fd_digits": "FD-digits", "class_accuracy": "class accuracy"}
  lines = [f"FD-digits after {steps} steps (lower is better), {len(next(iter(results.values())))} seeds.", "",
           "| arm | context weight | " + " | ".join(f"{names[m]} mean ± std | per seed" for m in metrics)
           + " | train wall time mean (s) |",
           "|---|---|" + "---|---|" * len(metrics) + "---|"]
  for arm, runs in results.items():
    cells = []
    for m in metrics:
      values = np.array([r[m] for r in runs])
      std = values.std(ddof=1) if len(values) > 1 else float("nan")
      cells += [f"{values.mean():.3f} ± {std:.3f}", ", ".join(f"{v:.3f}" for v in values)]
    seconds = np.mean([r["train_seconds"] for r in runs])
    lines.append(f"| {arm} | {runs[0]['weight']} | " + " | ".join(cells) + f" | {seconds:.0f} |")
  return "\n".join(lines)
