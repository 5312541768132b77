r"""The small-scale reproduction of ConPreDiff's claim: the same config with the context loss off and on.

    python -m conprediff_jax.experiments.ablation                      # default config, seeds 0,1,2
    python -m conprediff_jax.experiments.ablation --seeds=0 --steps=300 --workdir=/tmp/ablation   # quick look

Each (arm, seed) trains at equal steps and equal seeds (so equal data order and initial denoiser), then scores
the EMA parameters with FD-digits (lower is better). Arms run interleaved, so machine noise hits both alike.
Finished runs are reused when the command is repeated. Writes results.json and results.md into --workdir.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from conprediff_jax import cli
from conprediff_jax.experiments import report

_CONFIG = cli.define_config("Base config")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/ablation", "One sub-folder per (arm, seed).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each arm trains once per seed.")
_STEPS = flags.DEFINE_integer("steps", None, "Train steps (default: the config's).")


def arms(config) -> dict[str, float]:
  """Arm name -> context weight: the baseline, and the config's own lambda (0.1 if the config has it off)."""
  return {"baseline": 0.0, "context": config.context.weight or 0.1}


def run_one(config, workdir: str) -> dict:
  from conprediff_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  done_path = os.path.join(workdir, "ablation_run.json")
  if os.path.exists(done_path):
    with open(done_path, encoding="utf-8") as f:
      return json.load(f)
  start = time.perf_counter()
  train.train(config, workdir)
  wall = time.perf_counter() - start
  scores = evaluate.evaluate(config, workdir)
  result = {"train_seconds": wall, **scores}
  with open(done_path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  base = _CONFIG.value
  if _STEPS.value:
    base.train.steps = _STEPS.value
  results = {arm: [] for arm in arms(base)}
  for seed in map(int, _SEEDS.value):
    for arm, weight in arms(base).items():
      config = base.copy_and_resolve_references()
      config.seed, config.context.weight = seed, weight
      workdir = os.path.join(_WORKDIR.value, f"{arm}_seed{seed}")
      result = run_one(config, workdir)
      results[arm].append({"seed": seed, "weight": weight, **result})
      print(f"{arm} seed {seed}: FD-digits {result['fd_digits']:.3f}, {result['train_seconds']:.0f} s", flush=True)
  text = report.table(results, base.train.steps)
  print(text)
  with open(os.path.join(_WORKDIR.value, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(_WORKDIR.value, "results.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse(argv, _CONFIG))
