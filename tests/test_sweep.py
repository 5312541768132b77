"""The sweep command (experiments/sweep.py) and its report: the plan from a spec, resuming, paired differences,
and the ablation end to end on the smoke config."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conprediff_jax.experiments import report, sweep
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC = """
seeds = [0, 1]
baseline = "off"
[protocol]
"eval.num_samples" = 16
[arms]
off = { "context.weight" = 0.0 }
on = {}
wide = { "context.strides" = [1, 2], "context.timestep_weighting" = "snr" }
"""


def _spec(tmp_path, text=SPEC):
  path = tmp_path / "spec.toml"
  path.write_text(text)
  return sweep.load_spec(str(path))


def test_the_plan_goes_seed_by_seed_with_each_arms_settings(tmp_path):
  runs = sweep.plan(tiny_config(), _spec(tmp_path), str(tmp_path), steps=7,
                    command_line={"eval.num_samples": 8, "context.weight": 0.2})
  assert [(r["arm"], r["seed"]) for r in runs] == [("off", 0), ("on", 0), ("wide", 0), ("off", 1), ("on", 1),
                                                   ("wide", 1)]
  off, on, wide = runs[:3]
  # protocol < --steps < the command line < the arm < the seed
  assert off["config"].eval.num_samples == 8 and off["config"].train.steps == 7 and off["config"].seed == 0
  assert off["config"].context.weight == 0.0 and on["config"].context.weight == 0.2
  assert wide["config"].context.strides == (1, 2) and wide["config"].context.timestep_weighting == "snr"
  assert runs[3]["workdir"] == os.path.join(str(tmp_path), "off", "seed1")
  assert sweep.plan(tiny_config(), _spec(tmp_path), str(tmp_path), arms=["on"], seeds=[5])[0]["config"].seed == 5


@pytest.mark.parametrize("text,message", [
    ("seeds = [0", "is not valid TOML"),
    ("seeds = [0]", "must have an [arms] table"),
    ('baseline = "x"\n[arms]\na = {}', "'x' (baseline or [compare]) is not one of the arms"),
    ('[arms]\na = {}\n[compare]\na = "y"', "'y' (baseline or [compare]) is not one of the arms"),
    ('[arms]\na = { "context.wieght" = 0.0 }', "arm 'a': 'context.wieght' is not a config key"),
    ('[arms]\na = { "context.weight" = "high" }', "arm 'a': context.weight = 'high'"),
    ('[arms]\na = { "context.timestep_weighting" = "never" }', "arm 'a': config.context.timestep_weighting"),
])
def test_a_bad_spec_is_one_line_naming_what_is_wrong(tmp_path, text, message):
  with pytest.raises(ValueError) as error:
    sweep.plan(tiny_config(), _spec(tmp_path, text), str(tmp_path))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_a_finished_run_is_read_back_and_one_with_other_settings_refused(tmp_path):
  spec = _spec(tmp_path)
  run = sweep.plan(tiny_config(), spec, str(tmp_path), arms=["on"], seeds=[0])[0]
  os.makedirs(run["workdir"])
  result = {"settings": run["settings"], "train_seconds": 1.0, "fd_digits": 3.0}
  with open(os.path.join(run["workdir"], sweep.RUN_FILE), "w", encoding="utf-8") as f:
    json.dump(result, f)
  assert sweep.sweep([run], spec)["runs"]["on"] == [{"seed": 0, **result}]  # nothing trained
  with pytest.raises(ValueError, match=r"holds a run of arm 'on' with other settings .* delete it"):
    sweep.plan(tiny_config(), spec, str(tmp_path), arms=["on"], seeds=[0], steps=99)


def test_paired_differences_and_their_t_intervals():
  rng = np.random.default_rng(0)
  fd = {arm: rng.normal(20, 2, size=4) for arm in ("base", "a")}
  run = lambda arm, s: {"seed": s, "train_seconds": 1.0, "fd_digits": fd[arm][s], "recall_digits": 0.5 + s / 10}
  results = {"baseline": "base", "arms": {"base": {"context.weight": 0.0}, "a": {}},
             "runs": {"base": [run("base", s) for s in range(4)], "a": [run("a", s) for s in range(3, -1, -1)]}}
  d = report.differences(results)["a"]["fd_digits"]
  diff = fd["a"] - fd["base"]  # paired by seed, whatever the order the runs were listed in
  half = stats.t.ppf(0.975, 3) * diff.std(ddof=1) / 2
  np.testing.assert_allclose([d["mean"], d["low"], d["high"]], [diff.mean(), diff.mean() - half, diff.mean() + half])
  assert sorted(d["per_seed"]) == sorted(diff.tolist())
  assert report.differences(results)["a"]["recall_digits"]["mean"] == 0.0
  assert math.isnan(report.interval([1.0])[1])
  text = report.markdown(results, "t")
  assert "| base | context.weight=0.0 | 4 |" in text and f"| a | base | 4 | {diff.mean():+.3g} [" in text
  # An arm compared with another arm than the baseline ([compare]).
  results["runs"]["b"] = [run("a", s) for s in range(4)]
  results["compare"] = {"a": "b"}
  assert report.differences(results)["a"]["fd_digits"]["per_seed"] == [0.0] * 4


def test_the_plot_draws_one_row_per_arm(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  results = {"baseline": "b", "runs": {
      arm: [{"seed": s, "fd_digits": v + s, "train_seconds": 1.0} for s in range(3)] for arm, v in
      (("b", 10.0), ("x", 11.0), ("y", 8.0))}}
  report.plot(results, str(tmp_path / "p.png"))
  image = np.asarray(Image.open(tmp_path / "p.png").convert("L"))
  assert image.shape[0] == 28 * 2 + 70 and (image < 128).sum() > 500


@pytest.mark.slow  # pyproject.toml: `python -m pytest -q -m slow tests`
def test_ablation_trains_both_arms_and_writes_the_tables(tmp_path):
  # Through the session's compilation cache the two arms compile their shared programs (the sampler, which the
  # eval batch of 8 = sample.num_images shares with the end-of-training samples; the digits classifier) once.
  cmd = [sys.executable, "-m", "conprediff_jax.experiments.ablation", "--config=configs/smoke.py", "--seeds=0",
         "--steps=3", f"--workdir={tmp_path}", "--config.eval.num_samples=16", "--config.eval.batch_size=8"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["baseline"] == "baseline" and sorted(results["runs"]) == ["baseline", "context"]
  for arm, weight in (("baseline", 0.0), ("context", None)):
    run, = results["runs"][arm]
    assert run["seed"] == 0 and run["step"] == 3 and run["fd_digits"] > 0 and 0 <= run["recall_digits"] <= 1
    assert run["settings"].get("context.weight") == weight
  # Equal seeds: the two arms start from the same denoiser and see the same batches, so they differ only by
  # the context loss; their (different) scores are both in the tables.
  assert results["differences"]["context"]["fd_digits"]["per_seed"] == [
      results["runs"]["context"][0]["fd_digits"] - results["runs"]["baseline"][0]["fd_digits"]]
  table = (tmp_path / "results.md").read_text()
  assert "| baseline | context.weight=0.0 | 1 |" in table and "| context | - | 1 |" in table
  assert sorted(os.listdir(tmp_path)) == ["baseline", "context", "results.json", "results.md", "results.png"]


def test_a_run_stopped_by_a_signal_is_not_recorded_as_finished(tmp_path, monkeypatch):
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top
  spec = _spec(tmp_path)
  run = sweep.plan(tiny_config(), spec, str(tmp_path), arms=["on"], seeds=[0])[0]
  monkeypatch.setattr(train, "train", lambda config, workdir: {"step": 5, "stopped": "received SIGTERM"})
  with pytest.raises(sweep.Stopped, match=r"stopped at step 5 \(received SIGTERM\); run the same command again"):
    sweep.sweep([run], spec)
  assert sweep.finished(run) is None
