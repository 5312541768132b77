"""What a kill, a flipped byte or a cut file leaves in a workdir, for every reader (issue 33's findings): the readers
of a workdir's weights (sample, eval, inpaint, export, a first stage) fall back past an unreadable checkpoint as
training does, a metrics log cut mid-line is repaired before anything is appended, and a damaged config.json is one
line. The in-process checks build their checkpoints from random draws (nothing compiled); the slow one runs the CLI
on a trained smoke workdir."""

import functools
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conprediff_jax import (atomic_files, checkpointing, config_validation, families, main, parallel, train,
                            workdir_lock)
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


def _flip(path):
  data = bytearray(open(path, "rb").read())
  middle = slice(len(data) // 2, len(data) // 2 + 64)
  data[middle] = bytes(b ^ 0xFF for b in data[middle])
  open(path, "wb").write(data)


def _flip_bytes(step_dir):
  """64 bytes flipped in the middle of the step's tree metadata, which every reader reads (which data file holds
  the EMA weights varies from save to save)."""
  _flip(os.path.join(step_dir, "default", "_METADATA"))


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


def test_the_notebooks_cells_read_past_an_unreadable_checkpoint(tmp_path, caplog):
  """notebooks/colab_tpu_demo.ipynb opens a workdir's weights with sampling.load_latest_ema."""
  from conprediff_jax import sampling  # pylint: disable=g-import-not-at-top
  config = _workdir(tmp_path)
  _flip_bytes(tmp_path / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    trained = sampling.load_latest_ema(config, str(tmp_path))
  assert trained.step == 1 and any("checkpoint step 2 is unreadable" in r.getMessage() for r in caplog.records)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trained.weights), _saved(config, 1))


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
  log.write_text('{"step": 2, "lo\n{"step": 4, "loss": 0.4}\n7\n')  # damage before the end: left out, said
  with caplog.at_level(logging.WARNING):
    assert read_jsonl(log) == [{"step": 4, "loss": 0.4}]
  assert "left out 2 damaged line(s), the first line 1" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("damage", [b"", b'{"family": "gauss', b"\xff\xfe\x00garbage"])
def test_a_damaged_config_json_is_one_line(tmp_path, damage):
  config = tiny_config()
  (tmp_path / "config.json").write_bytes(damage)
  with pytest.raises(config_validation.ConfigError) as error:
    families.check_workdir(config, str(tmp_path), mode="sample")
  message = str(error.value)
  assert "\n" not in message and "config.json is unreadable" in message and "--allow_config_change" in message


@pytest.mark.slow  # a whole run and seven more processes: `python -m pytest -q -m slow tests`
def test_every_mode_reads_past_a_corrupt_checkpoint_and_a_torn_log(tmp_path):
  """The CLI end to end: every reader of the weights on a workdir whose newest checkpoint is damaged, then a run
  resumed on a torn metrics log, then a damaged config.json."""
  def main(*flags):
    return subprocess.run([sys.executable, "-m", "conprediff_jax.main", "--config=configs/smoke.py",
                           f"--workdir={tmp_path}", *flags], cwd=REPO, capture_output=True, text=True, timeout=600)

  assert main().returncode == 0  # checkpoints at steps 3 and 6
  good = _files(tmp_path / "checkpoints" / "3")
  _flip_bytes(tmp_path / "checkpoints" / "6")
  for mode in READERS:  # each meets the damaged checkpoint: the one before moved it aside, it goes back in place
    out = main(f"--mode={mode}")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "checkpoint step 6 is unreadable" in out.stderr, out.stderr[-3000:]
    os.rename(tmp_path / "corrupt_checkpoints" / "6", tmp_path / "checkpoints" / "6")
  assert _files(tmp_path / "checkpoints" / "3") == good
  assert json.loads((tmp_path / "eval_3.json").read_text())["step"] == 3  # eval scored the step it fell back to
  shutil.rmtree(tmp_path / "checkpoints" / "6")
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


# Issue 33's table: every file kind of a workdir x every damage x every mode that opens the workdir. A mode either
# goes on (with the weights of a checkpoint saved whole, falling back past a damaged one with a warning) or stops
# with an error main.py prints as one line (exit 2); never a traceback, and the good checkpoint is left byte for byte.
KINDS = {  # a file kind: where it lies in the workdir (every data file of the newest checkpoint: which of them holds
    # which arrays, and which are B-tree nodes with small arrays inline, varies from save to save)
    "checkpoint data": lambda wd: [os.path.join(d, f) for d, _, fs in os.walk(wd / "checkpoints" / "2")
                                   for f in fs if os.sep + "d" + os.sep in os.path.join(d, f)],
    "checkpoint tree metadata": lambda wd: wd / "checkpoints" / "2" / "default" / "_METADATA",
    "checkpoint step metadata": lambda wd: wd / "checkpoints" / "2" / "_CHECKPOINT_METADATA",
    "commit marker": lambda wd: wd / "checkpoints" / "2" / "commit_success.txt",
    "config.json": lambda wd: wd / "config.json",
    "metrics.jsonl": lambda wd: wd / "metrics.jsonl",
    "tensorboard events": lambda wd: next((wd / "tensorboard").iterdir()),
    "samples.npz": lambda wd: wd / "samples.npz",
    "eval json": lambda wd: wd / "eval_2.json",
    "train.lock": lambda wd: wd / workdir_lock.LOCK_FILE,
}


def _truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


DAMAGES = {"truncated": _truncate, "bytes flipped": _flip, "emptied": lambda p: open(p, "wb").close(),
           "deleted": os.remove}
READERS = ("sample", "eval", "inpaint", "export")  # the modes that read the weights alone


def _saved(config, step):
  """The EMA weights `_workdir` saved at `step` (the same random draws again)."""
  abstract = jax.eval_shape(functools.partial(train.init_state, train.make_experiment(config)), jax.random.key(0))
  rng = np.random.default_rng(step)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), abstract)["ema"]


@pytest.fixture(scope="module")
def whole_workdir(tmp_path_factory):
  """A workdir with a file of every kind: checkpoints 1 and 2, config.json, metrics and TensorBoard events, samples,
  an evaluation and the lock file; its config; the EMA weights saved at each step."""
  path = tmp_path_factory.mktemp("whole")
  config = _workdir(path)
  writer = MetricWriter(str(path))
  writer.scalars(2, {"loss": 0.5})
  writer.close()
  np.savez(path / "samples.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
  (path / "eval_2.json").write_text('{"step": 2, "fd_digits": 18.3}')
  with workdir_lock.hold(str(path)):
    pass
  return path, config, {step: _saved(config, step) for step in (1, 2)}


def _open_as(mode, config, workdir):
  """What `mode` reads of a workdir before it computes anything (main.py, then the mode's own opening): the step
  and EMA weights it goes on with. The readers' modes open the weights alike (families.restore_ema_weights)."""
  for reader in (mode,) if mode == "train" else READERS:
    families.check_workdir(config, str(workdir), mode=reader)
  if mode != "train":
    _, weights, _, step = _restore(config, workdir)
    return step, weights
  with workdir_lock.hold(str(workdir)):
    MetricWriter(str(workdir)).close()
    read_jsonl(workdir / "metrics.jsonl")
    run = train.setup(config, str(workdir))
    with jax.set_mesh(run.mesh):  # what train.restore_or_init reads
      step, state = checkpointing.restore_latest(run.manager, run.abstract_state, run.shardings)
    run.manager.close()
    return step, state["ema"]


# The fast suite takes a flipped byte in each file that is read before anything is computed; -m slow, the rest.
_FAST = ("bytes flipped", ("checkpoint data", "checkpoint tree metadata", "checkpoint step metadata", "config.json",
                           "metrics.jsonl"))


@pytest.mark.parametrize("kind,damage", [
    (k, d) if d == _FAST[0] and k in _FAST[1] else pytest.param(k, d, marks=pytest.mark.slow)
    for k in KINDS for d in DAMAGES])
def test_every_file_kind_every_damage_every_mode_goes_on_or_stops_in_one_line(tmp_path, whole_workdir, kind, damage):
  whole, config, saved = whole_workdir
  outcomes = {}
  for mode in ("train", "readers"):
    workdir = tmp_path / mode
    shutil.copytree(whole, workdir)
    good = _files(workdir / "checkpoints" / "1")
    where = KINDS[kind](workdir)
    for path in where if isinstance(where, list) else [where]:
      DAMAGES[damage](path)
    try:
      step, weights = _open_as(mode, config, workdir)
    except (config_validation.ConfigError, FileNotFoundError, ValueError) as error:
      assert "\n" not in str(error), str(error)
      assert isinstance(error, config_validation.ConfigError) or main.is_startup_error(error), str(error)
      outcomes[mode] = "one line: " + str(error)
    else:  # the weights are those of a checkpoint saved whole; a damaged one was moved aside
      jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, weights), saved[step])
      assert step == 2 or os.listdir(workdir / "corrupt_checkpoints") == ["2"]
      outcomes[mode] = step
    assert _files(workdir / "checkpoints" / "1") == good
  if kind == "checkpoint data":  # the newest checkpoint's data files: training, which reads it all, falls back
    assert outcomes["train"] == 1 and outcomes["readers"] in (1, 2), outcomes
  elif kind == "config.json":  # damaged: one line naming it; deleted: the mode goes on as on a workdir without one
    assert all(("config.json is unreadable" in o) if damage != "deleted" else o == 2 for o in outcomes.values())
  elif kind.startswith("checkpoint") or kind == "commit marker":
    assert set(outcomes.values()) <= {1, 2}, outcomes
  else:  # read, if at all, apart from the weights: the modes go on with the newest checkpoint
    assert set(outcomes.values()) == {2}, outcomes


@pytest.mark.parametrize("exchange", [True, False])  # renameat2's atomic swap, and two renames where it is missing
def test_an_exported_folder_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch, exchange):
  if not exchange:
    monkeypatch.setattr(atomic_files, "_exchange", lambda a, b: False)
  out = tmp_path / "export"
  with atomic_files.replacing_folder(str(out)) as tmp:
    os.makedirs(os.path.join(tmp, "unet"))
    open(os.path.join(tmp, "unet", "config.json"), "w").write("old")
  with pytest.raises(RuntimeError), atomic_files.replacing_folder(str(out)) as tmp:  # a failed export
    open(os.path.join(tmp, "model_index.json"), "w").write("new")
    raise RuntimeError("killed half-way")
  assert _files(out) == {os.path.join("unet", "config.json"): b"old"}
  with atomic_files.replacing_folder(str(out)) as tmp:
    open(os.path.join(tmp, "model_index.json"), "w").write("new")
  assert _files(out) == {"model_index.json": b"new"} and os.listdir(tmp_path) == ["export"]


def test_a_fingerprint_changes_with_any_one_flipped_bit_and_with_swapped_values():
  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(3, 5)).astype(np.float32), "h": rng.normal(size=(4,)).astype(jax.numpy.bfloat16),
          "n": np.arange(6, dtype=np.int32), "b": np.array([True, False]), "key": jax.random.key(3)}
  base = checkpointing.fingerprints(tree)
  assert base == checkpointing.fingerprints(jax.tree.map(lambda x: x, tree))  # deterministic
  raw = tree["w"].view(np.uint32).copy()
  for position in (0, 7, 14):
    for bit in (0, 13, 31):
      flipped = raw.copy()
      flipped.flat[position] ^= np.uint32(1 << bit)
      assert checkpointing.fingerprints({**tree, "w": flipped.view(np.float32)})["w"] != base["w"]
  swapped = tree["n"].copy()
  swapped[[1, 4]] = swapped[[4, 1]]
  assert checkpointing.fingerprints({**tree, "n": swapped})["n"] != base["n"]
  assert checkpointing.fingerprints({**tree, "key": jax.random.key(4)})["key"] != base["key"]
