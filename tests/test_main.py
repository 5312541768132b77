"""The entry point end to end on the smoke config: outputs, config overrides, --mode=sample. (Resuming is in
test_reliability.py.)"""

import json
import os
import re
import subprocess
import sys

import numpy as np

from conprediff_jax.metric_writers import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, *flags):
  """The CLI with a workdir relative to the current directory, as the README's default `workdirs/default` is."""
  cmd = [sys.executable, "-m", "conprediff_jax.main", f"--config={REPO}/configs/smoke.py", "--workdir=run", *flags]
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run(cmd, cwd=workdir.parent, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_cli_trains_samples_and_applies_overrides(tmp_path):
  tmp_path = tmp_path / "run"
  proc = run_main(tmp_path, "--config.train.steps=4", "--config.sample.num_images=5", "--config.seed=7")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r"memory per device: parameters [\d.]+ MiB; .* activations and other temporaries [\d.]+ MiB",
                   proc.stderr)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]  # every_steps=3, plus the final step
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["steps"] == 4 and saved["seed"] == 7
  assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [2, 4]
  images = np.load(tmp_path / "samples.npz", allow_pickle=False)["images"]
  assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0
  for name in ("samples.png", "loss.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert os.listdir(tmp_path / "tensorboard")

  # --mode=sample reads the EMA parameters of the latest checkpoint and reproduces the end-of-training samples.
  os.remove(tmp_path / "samples.npz")
  proc = run_main(tmp_path, "--mode=sample", "--config.train.steps=4", "--config.sample.num_images=5",
                  "--config.seed=7")
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["images"], images)
