r"""How much a digits metric moves with the samples alone: one checkpoint scored on independent sample sets.

    python -m conprediff_jax.experiments.noise_floor --workdir=workdirs/default     # --num_samples=512,2048 --repeats=5

For each sample count N, `--mode=eval`'s protocol is run `--repeats` times on the workdir's latest checkpoint, each
time with another `eval.sample_seed` (1, 2, ...; other initial noise, the same weights): the spread of FD-digits and
KID-digits across those runs is the floor under which a difference between two models at N samples means nothing.
Prints a table and writes `noise_floor.json` into the workdir.

    python -m conprediff_jax.experiments.noise_floor --workdir=A --against=B --num_samples=2048 --repeats=4

With `--against`, a second run of the same seed and step (another arm of a sweep) is scored on the same sample sets:
the spread of the paired difference A - B is the sampling noise of a sweep's paired comparison at N samples.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from conprediff_jax import cli

METRICS = ("fd_digits", "kid_digits")


def define_flags():
  """The command line's flags, defined when run as a program only: importing this module (tests) leaves the
  global flag names (config, workdir) to whoever else defines them."""
  return (cli.define_config("The config the workdir was trained with"),
          flags.DEFINE_string("workdir", "workdirs/default", "A trained run."),
          flags.DEFINE_list("num_samples", ["512", "2048"], "Sample counts to measure."),
          flags.DEFINE_integer("repeats", 5, "Independent sample sets per count."),
          flags.DEFINE_string("against", "", "A second run: report the paired differences' spread too."))


def measure(config, workdir: str, sizes: list[int], repeats: int) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from conprediff_jax import evaluate, families, sampling  # pylint: disable=g-import-not-at-top
  families.check_workdir(config, workdir, mode="eval")
  trained = sampling.load_latest_ema(config, workdir)
  rows = []
  with jax.set_mesh(trained.mesh):
    evaluator = evaluate.Evaluator(trained, workdir)  # reads eval.num_samples and eval.sample_seed per call
    for n in sizes:
      scores = []
      for seed in range(1, repeats + 1):
        config.eval.num_samples, config.eval.sample_seed = n, seed
        scores.append(evaluator(trained.weights, trained.step))
        print(f"N={n} sample_seed={seed}: " + ", ".join(f"{k} {scores[-1][k]:.4g}" for k in METRICS), flush=True)
      rows.append({"num_samples": n, "step": trained.step, "runs": scores,
                   **{f"{k}_{stat}": float(fn([s[k] for s in scores])) for k in METRICS
                      for stat, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1)))}})
  return rows


def paired(rows: list[dict], other: list[dict]) -> list[dict]:
  """Per sample count, the differences (this run minus the other) on each shared sample set, and their spread."""
  out = []
  for mine, theirs in zip(rows, other):
    diffs = {k: [a[k] - b[k] for a, b in zip(mine["runs"], theirs["runs"])] for k in METRICS}
    out.append({"num_samples": mine["num_samples"], "differences": diffs,
                **{f"{k}_{stat}": float(fn(diffs[k])) for k in METRICS
                   for stat, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1)))}})
  return out


def table(rows: list[dict]) -> str:
  lines = ["| samples | FD-digits mean +- std (min-max) | KID-digits mean +- std |", "|---|---|---|"]
  for r in rows:
    fd = [s["fd_digits"] for s in r["runs"]]
    lines.append(f"| {r['num_samples']} | {r['fd_digits_mean']:.2f} +- {r['fd_digits_std']:.2f} "
                 f"({min(fd):.2f}-{max(fd):.2f}) | {r['kid_digits_mean']:.4f} +- {r['kid_digits_std']:.4f} |")
  return "\n".join(lines)


def main(argv, config_flag, workdir_flag, num_samples_flag, repeats_flag, against_flag):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir, sizes = workdir_flag.value, [int(n) for n in num_samples_flag.value]
  try:
    rows = measure(config_flag.value, workdir, sizes, repeats_flag.value)
    other = measure(config_flag.value, against_flag.value, sizes, repeats_flag.value) if against_flag.value else None
  except (FileNotFoundError, ValueError) as e:  # no checkpoint, another config (ConfigError is a ValueError)
    cli.fail(str(e))
  text = table(rows)
  print(f"\n{len(rows[0]['runs'])} sample sets per row, checkpoint step {rows[0]['step']} of {workdir}\n{text}")
  result = rows
  if other is not None:
    result = {"runs": rows, "against": other, "paired": paired(rows, other)}
    print(f"\npaired with {against_flag.value} (this minus that, on the same sample sets):")
    for r in result["paired"]:
      print(f"  N={r['num_samples']}: FD-digits difference {r['fd_digits_mean']:+.2f} +- {r['fd_digits_std']:.2f}, "
            f"KID-digits {r['kid_digits_mean']:+.4f} +- {r['kid_digits_std']:.4f}")
  with open(os.path.join(workdir, "noise_floor.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  _flags = define_flags()
  app.run(lambda argv: main(argv, *_flags), flags_parser=lambda argv: cli.parse(argv, _flags[0]))
