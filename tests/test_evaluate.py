"""--mode=eval and periodic evaluation: metrics written per step, the best checkpoint kept beside the latest."""

import json
import os

import pytest

from conprediff_jax import evaluate, train
from conprediff_jax.metric_writers import read_jsonl


@pytest.mark.slow  # pyproject.toml: `python -m pytest -q -m slow tests`
def test_periodic_eval_keeps_the_best_checkpoint_and_eval_mode_scores_latest(tmp_path, config):
  config.eval.every_steps, config.eval.num_samples, config.eval.batch_size = 3, 24, 8
  config.checkpoint.max_to_keep = 1
  train.train(config, str(tmp_path))
  scores = {s: json.loads((tmp_path / f"eval_{s}.json").read_text())["fd_digits"] for s in (3, 6)}
  assert all(v > 0 for v in scores.values())
  logged = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "eval/fd_digits" in m]
  assert [(m["step"], m["eval/fd_digits"]) for m in logged] == sorted(scores.items())
  best_step = min(scores, key=scores.get)
  assert os.listdir(tmp_path / "best") == [str(best_step)]  # one kept, the lower FD-digits
  assert os.listdir(tmp_path / "checkpoints") == ["6"]

  # --mode=eval on the same workdir recomputes the latest step's score from its checkpoint.
  os.remove(tmp_path / "eval_6.json")
  result = evaluate.evaluate(config, str(tmp_path))
  assert result["step"] == 6 and abs(result["fd_digits"] - scores[6]) < 1e-6 * scores[6]
  assert (tmp_path / "eval_6.json").exists()
