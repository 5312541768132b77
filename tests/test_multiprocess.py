"""Two processes joined by jax.distributed (CPU, gloo) train exactly what one process trains.

This exercises the multi-host paths: per-host data rows, global arrays from process-local data, Orbax saves from
every process, and gathering samples across processes.
"""

import json
import os
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow  # pyproject.toml: `python -m pytest -q -m slow tests`
def test_two_processes_match_one(tmp_path):
  # Both runs train the smoke model; the one-process run reads the session's compilation cache (conftest.py),
  # where other end-to-end tests have left the same programs.
  env = dict(os.environ, CONPREDIFF_PORT=str(12000 + os.getpid() % 2000))
  two = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--config=configs/smoke.py",
                        f"--workdir={tmp_path / 'two'}"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  assert two.returncode == 0, two.stderr[-3000:]
  one = subprocess.run(["python", "-m", "conprediff_jax.main", "--config=configs/smoke.py",
                        f"--workdir={tmp_path / 'one'}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                       check=False)
  assert one.returncode == 0, one.stderr[-3000:]
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  images = [np.load(tmp_path / d / "samples.npz")["images"] for d in ("two", "one")]
  assert np.abs(images[0].astype(int) - images[1]).max() <= 1
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]
