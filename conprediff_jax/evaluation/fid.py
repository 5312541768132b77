"""Frechet distance, KID and feature statistics: NumPy in, Python floats out, float64 throughout.

Kept free of JAX so that scoring a set of features needs nothing but NumPy.
"""

import os

import numpy as np

_STATS_KEYS = ("mu", "sigma")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"feature_statistics needs features [N >= 2, D], got shape {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a PSD matrix; negative rounding-noise eigenvalues are clipped to 0."""
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), in float64.

  tr (sigma1 sigma2)^{1/2} is computed as the sum of sqrt(eig(A)) with A = sigma1^{1/2} sigma2 sigma1^{1/2},
  which is symmetric PSD and similar to sigma1 sigma2. This uses two symmetric eigendecompositions only: no
  inverse, no general (non-symmetric) sqrtm, no complex parts to discard and no eps*I offset to add, so it stays
  finite and accurate for rank-deficient covariances (fewer samples than feature dimensions), where
  scipy.linalg.sqrtm(sigma1 @ sigma2) needs the offset fallback and loses digits.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
        f"frechet_distance: shapes disagree: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
        f"mu2 {mu2.shape}, sigma2 {sigma2.shape}")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"frechet_distance: {name} has non-finite entries")
  # Symmetrise: covariances read from files or summed in float32 may be asymmetric by rounding.
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  root1 = _psd_sqrt(sigma1)
  a = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh((a + a.T) / 2)
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  # The true value is >= 0; a tiny negative result is rounding error between equal distributions.
  return float(max(value, 0.0))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 between two equal-size samples with k(a, b) = (a.b / d + 1)^3."""
  m, d = x.shape
  k_xx = (x @ x.T / d + 1.0) ** 3
  k_yy = (y @ y.T / d + 1.0) ** 3
  k_xy = (x @ y.T / d + 1.0) ** 3
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.mean())


def kid(features1: np.ndarray, features2: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> float:
  """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel.

  Averaged over `num_subsets` random subsets of m = min(subset_size, N1, N2) rows drawn without replacement
  from each set (seeded, so repeated calls agree). Can be slightly negative for equal distributions: the
  estimator is unbiased, so it is not clipped.
  """
  x = np.asarray(features1, dtype=np.float64)
  y = np.asarray(features2, dtype=np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"kid: features must be [N, D] with the same D, got {x.shape} and {y.shape}")
  m = min(subset_size, x.shape[0], y.shape[0])
  if m < 2:
    raise ValueError(f"kid: needs at least 2 samples per subset, got {m}")
  if num_subsets < 1:
    raise ValueError(f"kid: num_subsets must be >= 1, got {num_subsets}")
  rng = np.random.default_rng(seed)
  values = [
      _polynomial_mmd2(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
      for _ in range(num_subsets)
  ]
  return float(np.mean(values))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes (mu, sigma) as float64 arrays to an .npz file (plain arrays, loadable without pickle)."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"save_statistics: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
  with open(path, "wb") as f:  # A file object keeps np.savez from appending ".npz" to the name.
    np.savez(f, mu=mu, sigma=sigma)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu, sigma) written by save_statistics (or any .npz with float arrays `mu`, `sigma`); never unpickles."""
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError("not an .npz archive")
    with data:
      arrays = {k: data[k] for k in data.files if k in _STATS_KEYS}
  except FileNotFoundError:
    raise
  except (OSError, ValueError) as e:  # Object arrays: "Object arrays cannot be loaded when allow_pickle=False".
    raise ValueError(f"{path}: cannot read statistics: {e}") from None
  missing = [k for k in _STATS_KEYS if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a statistics file, missing {missing}")
  mu, sigma = arrays["mu"], arrays["sigma"]
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{path}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
  return mu.astype(np.float64), sigma.astype(np.float64)
