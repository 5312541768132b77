"""What a kill, a flipped byte or a cut file leaves in a workdir, for every reader (issue 33's findings): the readers
of a workdir's weights (sample, eval, inpaint, export, a first stage) fall back past an unreadable checkpoint as
training does, a metrics log cut mid-line is repaired before anything is appended, and a damaged config.json is one
line. The in-process checks build their checkpoints from random draws (nothing compiled); the slow one runs the CLI
on a trained smoke workdir."""

import functools
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conprediff_jax import checkpointing, config_validation, families, parallel, train
from conprediff_jax.metric_writers import MetricWriter, read_jsonl
from tests.conftest import REPO, tiny_config


def _workdir(path, steps=(1, 2)):
  """A smoke config's workdir with a checkpoint of random weights at each of `steps` and its config.json."""
  config = tiny_config()
  abstract = jax.eval_shape(functools.partial(train.init_state, train.make_experiment(config)), jax.random.key(0))
  manager = checkpointing.open_manager(os.path.join(path, "checkpoints"), max_to_keep=5)
  for step in steps:
    rng = np.random.default_rng(step)
    checkpointing.save(manager, step, jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), abstract),
                       force=True)
  manager.wait_until_finished()
  manager.close()
  (path / "config.json").write_text(config.to_json_best_effort())
  return config


def _files(directory):
  return {os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(directory) for f in fs}


def _flip_bytes(step_dir):
  victim = max((os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs), key=os.path.getsize)
  with open(victim, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
    f.seek(0)
    f.write(data)


def _restore(config, path, step=None):
  mesh = parallel.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  return families.restore_ema_weights(families.get(config), str(path), mesh, step)


def test_a_reader_falls_back_past_an_unreadable_checkpoint(tmp_path, caplog):
  config = _workdir(tmp_path)
  good = _files(tmp_path / "checkpoints" / "1")
  _flip_bytes(tmp_path / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    _, _, _, step = _restore(config, tmp_path)
  assert step == 1
  assert any("checkpoint step 2 is unreadable" in r.getMessage() for r in caplog.records)
  assert sorted(os.listdir(tmp_path / "corrupt_checkpoints")) == ["2"]  # moved aside, not deleted
  assert _files(tmp_path / "checkpoints" / "1") == good  # the good one untouched


def test_an_unreadable_step_asked_for_or_none_readable_is_one_line(tmp_path):
  config = _workdir(tmp_path, steps=(1,))
  _flip_bytes(tmp_path / "checkpoints" / "1")
  with pytest.raises(FileNotFoundError) as error:
    _restore(config, tmp_path, step=1)
  assert "\n" not in str(error.value) and "checkpoint 1 is unreadable" in str(error.value)
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):  # it was moved aside: none is left
    _restore(config, tmp_path)


def test_a_metrics_log_cut_mid_line_is_repaired_before_anything_is_appended(tmp_path, caplog):
  log = tmp_path / "metrics.jsonl"
  log.write_text('{"step": 2, "loss": 0.5}\n{"step": 4, "loss": 0.4}\n{"step": 6, "lo')
  assert read_jsonl(log) == [{"step": 2, "loss": 0.5}, {"step": 4, "loss": 0.4}]  # readers skip the cut line
  with caplog.at_level(logging.WARNING):
    writer = MetricWriter(str(tmp_path))
  writer.scalars(6, {"loss": 0.3})
  writer.close()
  assert any("ended in a cut line" in r.getMessage() for r in caplog.records)
  assert [r["step"] for r in read_jsonl(log)] == [2, 4, 6]
  log.write_text('{"step": 2, "lo\n{"step": 4, "loss": 0.4}\n')  # damage before the end is not a kill's
  with pytest.raises(ValueError, match="line 1 is not JSON"):
    read_jsonl(log)


@pytest.mark.parametrize("damage", [b"", b'{"family": "gauss', b"\xff\xfe\x00garbage"])
def test_a_damaged_config_json_is_one_line(tmp_path, damage):
  config = tiny_config()
  (tmp_path / "config.json").write_bytes(damage)
  with pytest.raises(config_validation.ConfigError) as error:
    families.check_workdir(config, str(tmp_path), mode="sample")
  message = str(error.value)
  assert "\n" not in message and "config.json is unreadable" in message and "--allow_config_change" in message


@pytest.mark.slow  # a whole run and three more processes: `python -m pytest -q -m slow tests`
def test_every_mode_reads_past_a_corrupt_checkpoint_and_a_torn_log(tmp_path):
  def main(*flags):
    return subprocess.run([sys.executable, "-m", "conprediff_jax.main", "--config=configs/smoke.py",
                           f"--workdir={tmp_path}", *flags], cwd=REPO, capture_output=True, text=True, timeout=600)

  assert main().returncode == 0  # checkpoints at steps 3 and 6
  good = _files(tmp_path / "checkpoints" / "3")
  _flip_bytes(tmp_path / "checkpoints" / "6")
  for mode in ("sample", "export"):
    out = main(f"--mode={mode}")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "checkpoint step 6 is unreadable" in out.stderr or mode == "export"  # sample moved it aside first
  assert _files(tmp_path / "checkpoints" / "3") == good
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 7, "lo')  # a kill while writing
  out = main("--config.train.steps=8")
  assert out.returncode == 0, out.stderr[-3000:]
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")][-2:] == [6, 8]
  (tmp_path / "config.json").write_text('{"family": "gauss')
  out = main("--mode=sample")
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 2 and lines[-1].startswith("error: ") and "config.json is unreadable" in lines[-1]


@pytest.mark.slow  # three short runs: `python -m pytest -q -m slow tests`
@pytest.mark.parametrize("where", ["checkpoint", "metrics", "samples"])
def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, where):
  """ENOSPC where the run writes its checkpoint at step 6, its metrics at step 4, or its samples at the end: a
  WriteError naming the file and the free space (main.py prints it as one line), the checkpoint of step 3 whole, and
  the same run again, with space, finishes."""
  import errno  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from conprediff_jax import atomic_files, metric_writers  # pylint: disable=g-import-not-at-top
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  with monkeypatch.context() as patch:
    if where == "checkpoint":
      save = ocp.CheckpointManager.save
      patch.setattr(ocp.CheckpointManager, "save",
                    lambda self, step, *a, **k: (_ for _ in ()).throw(full) if step == 6 else save(self, step, *a, **k))
    elif where == "metrics":
      dumps = metric_writers.json.dumps
      patch.setattr(metric_writers.json, "dumps",
                    lambda record, *a, **k: (_ for _ in ()).throw(full) if isinstance(record, dict) and
                    record.get("step") == 4 else dumps(record, *a, **k))
    else:
      replace = atomic_files.os.replace
      patch.setattr(atomic_files.os, "replace",
                    lambda src, dst: (_ for _ in ()).throw(full) if "samples" in dst else replace(src, dst))
    with pytest.raises(atomic_files.WriteError) as error:
      train.train(tiny_config(), str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and "No space left on device" in message and "MiB free" in message
  assert {"checkpoint": "checkpoints", "metrics": "metrics.jsonl", "samples": "samples"}[where] in message
  good = _files(tmp_path / "checkpoints" / "3")
  assert train.train(tiny_config(), str(tmp_path)) == {"step": 6, "stopped": None}
  assert _files(tmp_path / "checkpoints" / "3") == good or where != "checkpoint"
