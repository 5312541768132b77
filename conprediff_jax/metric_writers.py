"""Metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow), from process 0 only."""

import json
import os
import sys

from absl import logging
import jax

from conprediff_jax import atomic_files
import numpy as np


class MetricWriter:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    SummaryWriter = _import_summary_writer()  # pylint: disable=invalid-name
    path = os.path.join(workdir, "metrics.jsonl")
    drop_torn_line(path)
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    try:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()
    except OSError as e:
      raise atomic_files.write_failed(self._jsonl.name, e) from None
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)

  def images(self, step: int, name: str, mosaic: np.ndarray) -> None:
    """uint8 [H, W, C] mosaic."""
    if self.active:
      self._tb.add_image(name, mosaic, step, dataformats="HWC")

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


def _import_summary_writer():
  """tensorboardX imports torch at start-up where it is installed, only to accept torch tensors (never passed
  here): 1.7 s of every run's start. The import below sees torch as absent unless something already loaded it."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics log. A last line cut short (a run killed while writing it) is left out silently; a
  damaged line elsewhere (a flipped byte) is left out with a warning, so a damaged log never fails a run."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line for line in f if line.strip()]
  records, damaged = [], []
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    if isinstance(record, dict):
      records.append(record)
    elif i < len(lines) - 1 or line.endswith("\n"):
      damaged.append(i + 1)
  if damaged:
    logging.warning("%s: left out %d damaged line(s), the first line %d", path, len(damaged), damaged[0])
  return records


def drop_torn_line(path: str) -> None:
  """Cuts a metrics log back to its last complete line, with a warning, so that new records start on a line of their
  own: a kill while a line was being written leaves it without its newline."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
  logging.warning("%s ended in a cut line (%d bytes, a run killed while writing it); dropped it", path,
                  len(data) - keep)
