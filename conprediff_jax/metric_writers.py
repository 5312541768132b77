"""Metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow), from process 0 only."""

import json
import os

import jax
import numpy as np


class MetricWriter:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
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


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
