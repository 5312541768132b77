"""Sharded training and checkpoint restore on 8 emulated CPU devices.

All checks run in one subprocess (one JAX start-up with 8 devices, and one compile of each init the checks share);
each test reads its own check's result.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import with_xla_flags

pytestmark = pytest.mark.xdist_group("test_sharding")  # on one worker: its module fixture runs once

WORKER = os.path.join(os.path.dirname(__file__), "multidevice_worker.py")
WEIGHTS = (0.0, 0.1)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  """Runs every check once; returns `get(check) -> result`, which fails the calling test if that check failed."""
  checks = {f"sharded_step:{w}": f"sharded_step:{w}" for w in WEIGHTS}  # name -> the worker's argument
  checks["checkpoint_roundtrip"] = f"checkpoint_roundtrip:{tmp_path_factory.mktemp('sharding') / 'ckpt'}"
  env = dict(os.environ, XLA_FLAGS=with_xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, WORKER, *checks.values()], env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  outputs = {}  # position in argv -> (RESULT or ERROR, payload)
  for line in proc.stdout.splitlines():
    kind, _, rest = line.partition(" ")
    if kind in ("RESULT", "ERROR"):
      index, _, payload = rest.partition(" ")
      outputs[int(index)] = (kind, json.loads(payload))

  def get(check):
    index = list(checks).index(check)
    assert index in outputs, f"worker exited with {proc.returncode} before {check}:\n{proc.stderr[-3000:]}"
    kind, payload = outputs[index]
    assert kind == "RESULT", payload[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return payload

  return get


@pytest.mark.parametrize("context_weight", WEIGHTS)
def test_train_step_on_8_devices_matches_1_device(worker, context_weight):
  out = worker(f"sharded_step:{context_weight}")
  assert out["num_devices"] == 8
  assert any("fsdp" in spec for spec in out["specs"]), out["specs"]  # parameters really were split
  for (loss1, gnorm1), (loss8, gnorm8) in zip(out["losses1"], out["losses8"]):
    assert abs(loss1 - loss8) <= 1e-5 * abs(loss1), (out["losses1"], out["losses8"])
    assert abs(gnorm1 - gnorm8) <= 1e-4 * abs(gnorm1), (out["losses1"], out["losses8"])
  # Adam turns float rounding in near-zero gradients into sign flips of size ~lr in a few entries, so the
  # parameters are compared as the norm of their difference against the norm of the update itself.
  assert out["param_diff_norm"] <= 0.01 * out["param_update_norm"], out


def test_checkpoint_restores_onto_other_mesh_shapes(worker):
  out = worker("checkpoint_roundtrip")
  assert set(out) == {"(2, 4)", "(8, 1)", "(1, 8)", "(1, 1)"}
  for shape, result in out.items():
    assert result == {"equal": True, "on_target_shardings": True}, (shape, result)
