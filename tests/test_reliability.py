"""Preemption, hard kills, corrupt checkpoints and non-finite losses never lose more than a checkpoint interval."""

import functools
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conprediff_jax import data as data_lib
from conprediff_jax import train
from conprediff_jax import workdir_lock
from conprediff_jax.data.digits import load_digits
from conprediff_jax.metric_writers import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every run here, in this process or a child (start_main), trains the smoke model: through the session's
# compilation cache (conftest.py) its programs are compiled once and loaded, bit-identical, by the later runs.


def final_state(workdir, step):
  """A saved state as NumPy, restored without a target (so NNX list indices come back as string keys)."""
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default"))


def string_keys(tree):
  return {str(k): string_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def start_main(workdir, *flags):
  cmd = [sys.executable, "-m", "conprediff_jax.main", "--config=configs/smoke.py", f"--workdir={workdir}", *flags]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)


def test_second_run_on_a_workdir_is_refused_until_the_first_dies(tmp_path):
  # The first run is a process holding the lock as train() does; SIGKILL, which no handler sees, must free it.
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom conprediff_jax import workdir_lock\n"
                             f"with workdir_lock.hold({str(tmp_path)!r}):\n  print('held', flush=True)\n"
                             "  time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == "held\n"
  second = start_main(tmp_path, "--config.train.steps=2")
  _, err = second.communicate(timeout=300)
  assert second.returncode == 2 and "Traceback" not in err, err[-2000:]
  assert err.splitlines()[-1].startswith(f"error: --workdir={tmp_path} is being trained by pid {holder.pid} on host ")
  assert os.listdir(tmp_path) == [workdir_lock.LOCK_FILE]  # refused before writing anything
  holder.kill()
  holder.wait()
  with workdir_lock.hold(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirBusy, match="is being trained by pid"):  # flock is per open file
      with workdir_lock.hold(str(tmp_path)):
        pass


def test_nonfinite_step_leaves_state_untouched(config):
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  x, y = load_digits(config.data.image_size)
  batch = {"image": np.where(np.arange(8)[:, None, None, None] == 3, np.nan, x[:8]), "label": y[:8]}
  new, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1))
  assert not np.isfinite(metrics["loss"]) and int(metrics["nonfinite"]) == 1
  assert int(new["step"]) == 1
  same = jax.tree.map(np.array_equal, {k: state[k] for k in ("params", "ema", "opt_state")},
                      {k: new[k] for k in ("params", "ema", "opt_state")})
  assert all(jax.tree.leaves(same))


@pytest.mark.slow  # a whole run: `python -m pytest -q -m slow tests` (CI runs both commands)
def test_nan_policy_stops_after_n_in_a_row_keeping_good_params(tmp_path, config, monkeypatch):
  x, y = load_digits(config.data.image_size)
  poisoned = data_lib.ArraySource(np.full_like(x, np.nan), y, num_classes=10)
  monkeypatch.setattr(data_lib, "make_source", lambda _: poisoned)
  config.train.steps, config.train.max_nonfinite_steps, config.train.log_every = 50, 4, 2
  result = train.train(config, str(tmp_path))
  assert result["stopped"].startswith("4 consecutive non-finite") and result["step"] == 4
  saved = final_state(tmp_path, 4)
  assert int(saved["nonfinite"]) == 4
  init = jax.device_get(jax.jit(functools.partial(train.init_state, train.make_experiment(config)))(
      jax.random.key(config.seed)))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, string_keys(init["params"]), saved["params"])))
  assert [m["skipped_steps"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [2, 2]


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.slow  # two or three whole runs each: `python -m pytest -q -m slow tests`
@pytest.mark.parametrize("damage", ["truncated", "half_written"])
def test_corrupt_latest_checkpoint_falls_back_to_older(tmp_path, config, damage, caplog):
  train.train(config, str(tmp_path))  # checkpoints at 3 and 6
  logged_before = len(read_jsonl(tmp_path / "metrics.jsonl"))
  ckpts = tmp_path / "checkpoints"
  if damage == "truncated":
    victim = _largest_file(ckpts / "6")
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 3)
    bad = 6
  else:  # a step directory whose writer died half-way: metadata present, data missing
    os.makedirs(ckpts / "9" / "default")
    (ckpts / "9" / "_CHECKPOINT_METADATA").write_text("{}")
    bad = 9
  config.train.steps = 9
  with caplog.at_level("WARNING"):
    train.train(config, str(tmp_path))
  assert any(f"checkpoint step {bad} is unreadable" in r.getMessage() for r in caplog.records)
  assert (tmp_path / "corrupt_checkpoints" / str(bad)).is_dir()  # kept aside, not deleted
  assert int(final_state(tmp_path, 9)["step"]) == 9
  resumed_from = 3 if damage == "truncated" else 6
  steps = [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")][logged_before:]
  assert steps == [s for s in (4, 6, 8, 9) if s > resumed_from]  # resumed, not restarted from step 0
  if damage == "truncated":  # re-running a finished run does no work and keeps its checkpoints
    checkpoints = sorted(os.listdir(ckpts))
    train.train(config, str(tmp_path))
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == logged_before + len(steps)
    assert sorted(os.listdir(ckpts)) == checkpoints


@pytest.mark.slow  # a whole run in a child process: `python -m pytest -q -m slow tests` (CI runs both commands)
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  proc = start_main(tmp_path, "--config.train.steps=100000", "--config.checkpoint.every_steps=100000")
  wait_for(lambda: read_jsonl(tmp_path / "metrics.jsonl"), proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  assert "received SIGTERM" in stderr
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints")]
  assert len(steps) == 1 and 2 <= steps[0] < 100000


@pytest.mark.slow  # three whole runs, one of them killed: run by `pytest -m slow`
def test_sigkill_at_random_step_then_resume_matches_uninterrupted_run(tmp_path, config):
  # The reference, the killed process and the restart run the same programs: whichever compiles them first leaves
  # them in the session's compilation cache for the others (the same executables, so bitwise equality still holds).
  config.train.steps, config.checkpoint.every_steps = 24, 4
  train.train(config, str(tmp_path / "reference"))

  killed = tmp_path / "killed"
  proc = start_main(killed, "--config.train.steps=24", "--config.checkpoint.every_steps=4")
  target = random.Random().choice([4, 8, 12, 16])
  wait_for(lambda: os.path.isdir(killed / "checkpoints" / str(target)), proc)
  time.sleep(random.random() * 0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  train.train(config, str(killed))  # the same run, restarted

  reference, resumed = final_state(tmp_path / "reference", 24), final_state(killed, 24)
  equal = jax.tree.map(np.array_equal, reference, resumed)
  assert all(jax.tree.leaves(equal)), f"killed after step {target}: states differ"
