r"""A grid of training runs (arms x seeds) from a small spec file, each scored by the same protocol, reported as
paired differences against a baseline arm.

    python -m conprediff_jax.experiments.sweep --spec=configs/sweeps/context_study.toml --workdir=workdirs/study
    python -m conprediff_jax.experiments.sweep --spec=... --arms=baseline,alpha_bar --seeds=0,1,2   # a later stage

The spec (TOML, see configs/sweeps/) names the seeds, the baseline arm, a protocol (config overrides every run
shares: how long it trains, how it is scored), the arms (each a table of config overrides) and, in [compare], arms
paired with another arm than the baseline. Every run trains
`--config` (configs/default.py by default; `--config.<key>=value` overrides it for all runs) with its arm's
overrides at its seed, in `<workdir>/<arm>/seed<seed>/`, then `--mode=eval` scores it. Runs go seed by seed, the
arms of a seed in turn, so machine noise hits the arms alike. Arms of one seed share the initial denoiser, the
batches and the evaluation's initial noise: their scores are paired, and the report gives each arm's difference
from the baseline of the same seed with a 95% t-interval over seeds.

Repeating the command resumes: a finished run is read back (its settings must match, or it is refused by name),
an unfinished one resumes from its last checkpoint (SIGTERM or Ctrl-C saves one and stops the sweep). `--report`
tabulates the finished runs only. Writes results.json, results.md and results.png into the workdir.
"""

import json
import os
import sys
import time
import tomllib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from conprediff_jax import atomic_files, cli
from conprediff_jax.experiments import report

RUN_FILE = "sweep_run.json"


class Stopped(Exception):
  """The sweep was told to stop (SIGTERM, SIGINT) during a run, whose checkpoint is saved."""
SPECS = os.path.join(cli.REPO, "configs", "sweeps")


def define_flags(default_spec: str, default_workdir: str) -> dict:
  """The command line's flags; defined by the program that runs (this one, or ablation.py with its own spec)."""
  return {"config": cli.define_config("Base config of every run"),
          "spec": flags.DEFINE_string("spec", default_spec, "The sweep's spec file (TOML; see configs/sweeps/)."),
          "workdir": flags.DEFINE_string("workdir", default_workdir, "One sub-folder per (arm, seed)."),
          "arms": flags.DEFINE_list("arms", None, "Run these arms only (default: every arm of the spec)."),
          "seeds": flags.DEFINE_list("seeds", None, "Seeds (default: the spec's)."),
          "steps": flags.DEFINE_integer("steps", None, "Train steps of every run (default: the config's)."),
          "report": flags.DEFINE_bool("report", False, "Train nothing: tabulate the runs already finished.")}


def load_spec(path: str) -> dict:
  """The spec file as {"seeds", "baseline", "protocol", "arms"}; one-line ValueErrors for what is wrong in it."""
  try:
    with open(path, "rb") as f:
      spec = tomllib.load(f)
  except OSError as e:
    raise ValueError(f"--spec: cannot read {path!r} ({e.strerror}); see configs/sweeps/ for examples") from None
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"--spec: {path} is not valid TOML ({e})") from None
  unknown = sorted(set(spec) - {"seeds", "baseline", "protocol", "arms", "compare"})
  if unknown or not spec.get("arms"):
    raise ValueError(f"--spec: {path} must have an [arms] table (and may have seeds, baseline, protocol, compare); "
                     f"{'unknown entries ' + str(unknown) if unknown else 'no arms'}")
  spec.setdefault("seeds", [0])
  spec.setdefault("protocol", {})
  spec.setdefault("compare", {})
  spec.setdefault("baseline", next(iter(spec["arms"])))
  for arm in [spec["baseline"], *spec["compare"], *spec["compare"].values()]:
    if arm not in spec["arms"]:
      raise ValueError(f"--spec: {arm!r} (baseline or [compare]) is not one of the arms {list(spec['arms'])}")
  return spec


def plan(base, spec: dict, workdir: str, arms: list[str] | None = None, seeds: list[int] | None = None,
         steps: int | None = None, command_line: dict | None = None) -> list[dict]:
  """Every run, in the order they go: [{"arm", "seed", "settings", "config", "workdir"}], each config validated,
  each finished one checked to have been made with the same settings.

  A run's settings, later ones winning: the spec's protocol, `steps`, the command line's --config.<key> overrides
  (`command_line`, already in `base`: listed so that a run records them), its arm's overrides, its seed."""
  from conprediff_jax import config_validation, families  # pylint: disable=g-import-not-at-top
  arms = arms or list(spec["arms"])
  missing = [a for a in arms if a not in spec["arms"]]
  if missing:
    raise ValueError(f"--arms: {missing} not in the spec's arms {list(spec['arms'])}")
  protocol = {**spec["protocol"], **({"train.steps": steps} if steps else {}), **(command_line or {})}
  runs = []
  for seed in seeds if seeds is not None else spec["seeds"]:
    for arm in arms:
      settings = {**protocol, **spec["arms"][arm], "seed": int(seed)}
      config = cli.override(base, settings, f"arm {arm!r}")
      try:
        families.validate(config, num_devices=1, process_count=1)
      except config_validation.ConfigError as e:
        raise ValueError(f"arm {arm!r}: {e}") from None
      run = {"arm": arm, "seed": int(seed), "settings": settings, "config": config,
             "workdir": os.path.join(workdir, arm, f"seed{seed}")}
      done = finished(run)
      if done is not None and done.get("settings") != json.loads(json.dumps(settings)):
        raise ValueError(f"{run['workdir']} holds a run of arm {arm!r} with other settings ({done.get('settings')}); "
                         "delete it or use another --workdir")
      runs.append(run)
  return runs


def finished(run: dict) -> dict | None:
  """The result a finished run wrote, or None."""
  path = os.path.join(run["workdir"], RUN_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_one(run: dict) -> dict:
  """Trains (or resumes) and scores one run; writes its result last, so that only a finished run has one."""
  from conprediff_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  outcome = train.train(run["config"], run["workdir"])
  if outcome["stopped"]:  # SIGTERM or SIGINT: the checkpoint is saved; this run is not finished, nor is the sweep
    raise Stopped(f"{run['workdir']}: stopped at step {outcome['step']} ({outcome['stopped']}); run the same "
                  "command again to resume")
  seconds = time.perf_counter() - start
  result = {"settings": run["settings"], "train_seconds": seconds, **evaluate.evaluate(run["config"], run["workdir"])}
  path = os.path.join(run["workdir"], RUN_FILE)
  atomic_files.write_json(path, result)
  return result


def sweep(runs: list[dict], spec: dict) -> dict:
  """Runs (or reads back) every run of the plan; returns the results report.py reads."""
  results, started, fresh = {}, time.perf_counter(), 0
  for i, run in enumerate(runs):
    result = finished(run)
    was_done = result is not None
    if not was_done:
      result = run_one(run)
      fresh += 1
    results.setdefault(run["arm"], []).append({"seed": run["seed"], **result})
    left = len(runs) - i - 1
    eta = (time.perf_counter() - started) / fresh * left if fresh else 0.0
    scores = ", ".join(f"{k} {result[k]:.4g}" for k in report.METRICS if k in result)
    print(f"[{i + 1}/{len(runs)}] {run['arm']} seed {run['seed']}: {scores}"
          f"{' (done before)' if was_done else ''}; {left} to go, ~{eta / 60:.0f} min", flush=True)
  return {"baseline": spec["baseline"], "compare": spec["compare"], "arms": {a: spec["arms"][a] for a in results},
          "protocol": spec["protocol"], "runs": results}


def write(results: dict, workdir: str, title: str) -> str:
  text = report.markdown(results, title)
  os.makedirs(workdir, exist_ok=True)
  atomic_files.write_json(os.path.join(workdir, "results.json"),
                          {**results, "differences": report.differences(results)})
  atomic_files.write_text(os.path.join(workdir, "results.md"), text + "\n")
  report.plot(results, os.path.join(workdir, "results.png"))
  return text


def main(argv, f):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    spec = load_spec(f["spec"].value)
    seeds = None if f["seeds"].value is None else [int(s) for s in f["seeds"].value]
    command_line = config_flags.get_override_values(flags.FLAGS["config"])
    runs = plan(f["config"].value, spec, f["workdir"].value, f["arms"].value, seeds, f["steps"].value, command_line)
  except ValueError as e:  # the spec, the flags, or a config they make
    cli.fail(str(e))
  if f["report"].value:
    runs = [r for r in runs if finished(r) is not None]
    if not runs:
      cli.fail(f"--report: no finished run in {f['workdir'].value} for these arms and seeds")
  from conprediff_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    results = sweep(runs, spec)
  except Stopped as e:
    print(e, file=sys.stderr)
    return
  except workdir_lock.WorkdirBusy as e:  # another sweep (or training) is on this run
    cli.fail(str(e))
  print(write(results, f["workdir"].value, f"Sweep {os.path.basename(f['spec'].value)}"))


def run_program(default_spec: str, default_workdir: str):
  parsed = define_flags(default_spec, default_workdir)
  app.run(lambda argv: main(argv, parsed), flags_parser=lambda argv: cli.parse(argv, parsed["config"]))


if __name__ == "__main__":
  run_program(os.path.join(SPECS, "context_study.toml"), "workdirs/context_study")
