"""Improved precision and recall (Kynkaenniemi et al. 2019): how much of the samples lies on the real data's
manifold (fidelity), and how much of the real data lies on the samples' (coverage), each manifold being the union
of balls around its points reaching their k-th nearest neighbour. FD folds both into one number; these tell a model
that draws fewer kinds of digit (recall falls) from one that draws worse digits (precision falls)."""

import numpy as np

_CHUNK = 1024  # rows of the distance matrix held at once


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.maximum(np.sum(a**2, 1)[:, None] - 2.0 * a @ b.T + np.sum(b**2, 1)[None, :], 0.0)


def _radii(points: np.ndarray, k: int) -> np.ndarray:
  """Squared distance from each point to its k-th nearest other point."""
  out = np.empty(len(points))
  for start in range(0, len(points), _CHUNK):
    d = _pairwise_sq(points[start:start + _CHUNK], points)
    out[start:start + _CHUNK] = np.partition(d, k, axis=1)[:, k]  # column 0 of the order is the point itself
  return out


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
  """Fraction of `queries` inside at least one ball of `manifold`."""
  inside = 0
  for start in range(0, len(queries), _CHUNK):
    inside += int(np.sum(np.any(_pairwise_sq(queries[start:start + _CHUNK], manifold) <= radii[None, :], axis=1)))
  return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
  """(precision, recall) of features `fake` [N, D] against `real` [M, D], with k-th-neighbour balls."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"precision_recall: features must be [N, D] with the same D, got {real.shape}, {fake.shape}")
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"precision_recall: needs more than k={k} points in each set, got {len(real)}, {len(fake)}")
  precision = _coverage(real, _radii(real, k), fake)
  recall = _coverage(fake, _radii(fake, k), real)
  return precision, recall
