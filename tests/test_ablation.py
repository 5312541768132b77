"""The ablation command end to end on the smoke config: both arms, equal seeds, a table."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # pyproject.toml: `python -m pytest -q -m slow tests`
def test_ablation_trains_both_arms_and_writes_a_table(tmp_path):
  # Through the session's compilation cache the two arms compile their shared programs (the sampler, which the
  # eval batch of 8 = sample.num_images shares with the end-of-training samples; the digits classifier) once.
  cmd = [sys.executable, "-m", "conprediff_jax.experiments.ablation", "--config=configs/smoke.py", "--seeds=0",
         "--steps=3", f"--workdir={tmp_path}", "--config.eval.num_samples=16", "--config.eval.batch_size=8"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert {arm: [r["weight"] for r in runs] for arm, runs in results.items()} == {"baseline": [0.0], "context": [0.1]}
  for runs in results.values():
    assert runs[0]["step"] == 3 and runs[0]["fd_digits"] > 0
  # Equal seeds: the two arms start from the same denoiser and see the same batches, so they differ only by
  # the context loss; their (different) scores are both in the table.
  table = (tmp_path / "results.md").read_text()
  assert "| baseline | 0.0 |" in table and "| context | 0.1 |" in table
  assert sorted(os.listdir(tmp_path)) == ["baseline_seed0", "context_seed0", "results.json", "results.md"]


def test_table_adds_class_accuracy_for_conditional_runs():
  from conprediff_jax.experiments.report import table  # pylint: disable=g-import-not-at-top
  run = lambda fd, acc, seed: {"seed": seed, "weight": 0.0, "fd_digits": fd, "class_accuracy": acc,
                               "train_seconds": 10.0}
  text = table({"baseline": [run(20.0, 0.5, 0), run(22.0, 0.7, 1)]}, steps=5)
  assert "class accuracy mean ± std" in text
  assert "| baseline | 0.0 | 21.000 ± 1.414 | 20.000, 22.000 | 0.600 ± 0.141 | 0.500, 0.700 | 10 |" in text
  plain = table({"baseline": [{k: v for k, v in run(20.0, 0.5, 0).items() if k != "class_accuracy"}]}, steps=5)
  assert "class accuracy" not in plain and "| baseline | 0.0 | 20.000 ± nan | 20.000 | 10 |" in plain
