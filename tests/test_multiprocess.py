"""Two processes joined by jax.distributed (CPU, gloo) train exactly what one process trains.

This exercises the multi-host paths: per-host data rows, global arrays from process-local data, Orbax saves from
every process, and gathering samples across processes.
"""

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from conprediff_jax.metric_writers import read_jsonl

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


@pytest.mark.slow  # three two-process runs: `python -m pytest -q -m slow tests`
def test_sigterm_to_one_host_stops_both_at_one_step_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
  flags = ["--config=configs/smoke.py", "--config.train.steps=300", "--config.checkpoint.every_steps=1000"]
  port = 14000 + os.getpid() % 2000
  launch = lambda name, port: subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", "2", *flags, f"--workdir={tmp_path / name}"], cwd=REPO,
      env=dict(os.environ, CONPREDIFF_PORT=str(port)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  stopped = launch("stopped", port)
  metrics = tmp_path / "stopped" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # a few steps in
    assert stopped.poll() is None and time.time() < deadline, stopped.communicate()[1][-3000:]
    time.sleep(0.05)
  with open(f"/proc/{stopped.pid}/task/{stopped.pid}/children", encoding="utf-8") as f:
    hosts = [int(p) for p in f.read().split()]
  assert len(hosts) == 2
  os.kill(hosts[1], signal.SIGTERM)  # the second host only
  _, err = stopped.communicate(timeout=300)
  assert stopped.returncode == 0, err[-3000:]
  # main.py's last line from each host (the two may share a line of the launcher's stderr)
  steps = [int(s) for s in re.findall(r"stopped at step (\d+):[^:\n]*; resume with the same command", err)]
  assert len(steps) == 2 and steps[0] == steps[1] < 300, err[-3000:]  # both hosts, the same step
  assert os.listdir(tmp_path / "stopped" / "checkpoints") == [str(steps[0])]

  resumed, whole = launch("stopped", port), launch("whole", port + 1)  # the same command resumes; one runs through
  for proc in (resumed, whole):
    assert proc.wait(timeout=600) == 0, proc.communicate()[1][-3000:]
  # Every loss logged after the stop, and the samples of the final EMA weights, bitwise.
  history = {name: {m["step"]: m["loss"] for m in read_jsonl(tmp_path / name / "metrics.jsonl") if "loss" in m}
             for name in ("stopped", "whole")}
  # A logged loss is the mean since the previous log (every 2 steps in configs/smoke.py). After a stop at an odd
  # step the resumed run's first window is that one step, the whole run's two: compare whole windows only.
  after = [s for s in history["whole"] if s - 2 >= steps[0]]
  assert after and [history["stopped"][s] for s in after] == [history["whole"][s] for s in after]
  np.testing.assert_array_equal(*(np.load(tmp_path / name / "samples.npz")["images"] for name in ("stopped", "whole")))


@pytest.mark.slow  # two two-process runs: `python -m pytest -q -m slow tests`
def test_two_processes_fall_back_past_one_corrupt_checkpoint_to_the_same_step(tmp_path):
  from tests.test_workdir_faults import _files, _flip_bytes  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, CONPREDIFF_PORT=str(16000 + os.getpid() % 2000))
  run = lambda *flags: subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2", "--config=configs/smoke.py", f"--workdir={tmp_path}", *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  first = run()  # checkpoints at steps 3 and 6
  assert first.returncode == 0, first.stderr[-3000:]
  good = _files(tmp_path / "checkpoints" / "3")
  _flip_bytes(tmp_path / "checkpoints" / "6")
  resumed = run("--config.train.steps=9")
  assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
  assert resumed.stderr.count("checkpoint step 6 is unreadable") == 2  # said by each process
  assert resumed.stderr.count("resumed from the checkpoint at step 3") == 2, resumed.stderr[-3000:]
  assert os.listdir(tmp_path / "corrupt_checkpoints") == ["6"]
  assert _files(tmp_path / "checkpoints" / "3") == good
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6", "9"]  # trained on from step 3
