"""The random-access source contract that the pipeline reads, and the in-memory source.

A source maps an index to one example `{"image": float32 [S, S, C] in [-1, 1], "label": int32}`.
Random access (rather than iteration) is what lets the pipeline compute any step's batch from
(seed, step) alone, so a resumed run needs no saved iterator state.
"""

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

Example = dict[str, Any]
Batch = dict[str, np.ndarray]
MapFn = Callable[[Callable[[int], Example], Iterable[int]], Iterable[Example]]


def stack_examples(examples: Iterable[Example]) -> Batch:
  """Stacks per-example dicts into one dict of arrays with fixed dtypes."""
  examples = list(examples)
  return {
      "image": np.stack([e["image"] for e in examples]).astype(np.float32, copy=False),
      "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
  }


class Source(abc.ABC):
  """A finite, random-access collection of examples."""

  num_classes: int = 1

  @abc.abstractmethod
  def __len__(self) -> int:
    ...

  @abc.abstractmethod
  def __getitem__(self, index: int) -> Example:
    ...

  def get_batch(self, indices: Sequence[int], map_fn: MapFn = map) -> Batch:
    """Reads `indices` as one batch; `map_fn` lets the caller decode on a thread pool."""
    return stack_examples(map_fn(self.__getitem__, [int(i) for i in indices]))


class ArraySource(Source):
  """Examples already decoded in memory; batches are one vectorised gather, no per-item Python."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int | None = None):
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
      raise ValueError(f"ArraySource wants images [N, S, S, C], got shape {images.shape}")
    if len(images) != len(labels):
      raise ValueError(f"ArraySource got {len(images)} images but {len(labels)} labels")
    self.images = np.ascontiguousarray(images, dtype=np.float32)
    self.labels = np.asarray(labels, dtype=np.int32)
    self.num_classes = int(num_classes if num_classes is not None else self.labels.max(initial=0) + 1)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> Example:
    return {"image": self.images[index], "label": np.int32(self.labels[index])}

  def get_batch(self, indices: Sequence[int], map_fn: MapFn = map) -> Batch:
    del map_fn  # nothing to decode
    idx = np.asarray(indices, dtype=np.int64)
    return {"image": self.images[idx], "label": self.labels[idx]}
