"""Frechet distance, KID and statistics files against independent float64 references."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from conprediff_jax import evaluation
from conprediff_jax.evaluation import fid


def _trace_sqrt_product(x1: np.ndarray, x2: np.ndarray) -> float:
  """tr (S1 S2)^{1/2} from raw features: with S = A A^T, it is the nuclear norm of A1^T A2 (no matrix sqrt)."""
  a1 = (x1 - x1.mean(0)).T / np.sqrt(len(x1) - 1)
  a2 = (x2 - x2.mean(0)).T / np.sqrt(len(x2) - 1)
  return float(np.linalg.svd(a1.T @ a2, compute_uv=False).sum())


def _reference_fd(x1: np.ndarray, x2: np.ndarray) -> float:
  s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
  diff = x1.mean(0) - x2.mean(0)
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(x1, x2))


def _scipy_sqrtm_fd(mu1, s1, mu2, s2) -> float:
  """The pytorch-fid route, valid on well-conditioned covariances."""
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(rng, n, d, shift=0.0, rank=None):
  mix = rng.normal(size=(d if rank is None else rank, d))
  z = rng.normal(size=(n, mix.shape[0]))
  return z @ mix / np.sqrt(d) + shift + rng.normal(size=d)


def test_statistics_are_float64_mean_and_unbiased_cov():
  x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
  mu, sigma = fid.feature_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (7, 7)
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  xc = x.astype(np.float64) - mu
  np.testing.assert_allclose(sigma, xc.T @ xc / 49, rtol=1e-12)
  with pytest.raises(ValueError):
    fid.feature_statistics(x[:1])


def test_frechet_matches_references_on_random_features():
  rng = np.random.default_rng(1)
  x1, x2 = _features(rng, 400, 32), _features(rng, 300, 32, shift=0.3)
  stats1, stats2 = fid.feature_statistics(x1), fid.feature_statistics(x2)
  got = fid.frechet_distance(*stats1, *stats2)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, _reference_fd(x1, x2), rtol=1e-9)
  np.testing.assert_allclose(got, _scipy_sqrtm_fd(*stats1, *stats2), rtol=1e-7)
  np.testing.assert_allclose(fid.frechet_distance(*stats2, *stats1), got, rtol=1e-9)  # Symmetric.


def test_frechet_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  v1, v2 = rng.uniform(0.1, 3, size=16), rng.uniform(0.1, 3, size=16)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want, rtol=1e-12)
  # One-dimensional: (m1 - m2)^2 + (s1 - s2)^2.
  np.testing.assert_allclose(fid.frechet_distance([1.0], [[4.0]], [0.0], [[1.0]]), 2.0, rtol=1e-12)


def test_frechet_stable_on_rank_deficient_covariances():
  rng = np.random.default_rng(3)
  d = 64
  x1 = _features(rng, 40, d)           # 40 samples in 64 dims: rank <= 39.
  x2 = _features(rng, 30, d, rank=10)  # Rank <= 10.
  stats1, stats2 = fid.feature_statistics(x1), fid.feature_statistics(x2)
  assert np.linalg.matrix_rank(stats2[1]) <= 10
  got = fid.frechet_distance(*stats1, *stats2)
  want = _reference_fd(x1, x2)
  assert np.isfinite(got) and got >= 0
  np.testing.assert_allclose(got, want, rtol=1e-8)
  # Identical singular distributions: exactly zero up to rounding, never negative.
  same = fid.frechet_distance(*stats2, *stats2)
  assert 0 <= same < 1e-9 * np.trace(stats2[1])


def test_frechet_rejects_bad_inputs():
  with pytest.raises(ValueError, match="shapes"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="non-finite"):
    fid.frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


def _reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2, cubic kernel, written pair by pair (off-diagonal means)."""
  d = x.shape[1]
  k = lambda a, b: (a @ b.T / d + 1) ** 3
  off = lambda m: m[~np.eye(len(m), dtype=bool)].mean()
  return float(off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean())


def test_kid_equals_unbiased_mmd_when_subset_is_everything():
  rng = np.random.default_rng(4)
  x, y = _features(rng, 60, 12), _features(rng, 60, 12, shift=0.5)
  got = fid.kid(x, y, num_subsets=3, subset_size=1000)  # Each subset is a permutation of all rows.
  np.testing.assert_allclose(got, _reference_mmd2(x, y), rtol=1e-10)


def test_kid_subsets_seeded_and_averaged():
  rng = np.random.default_rng(5)
  x, y = _features(rng, 300, 16), _features(rng, 250, 16, shift=0.3)
  a = fid.kid(x, y, num_subsets=20, subset_size=100, seed=7)
  assert a == fid.kid(x, y, num_subsets=20, subset_size=100, seed=7)
  # Replay the documented sampling with an independent MMD.
  r = np.random.default_rng(7)
  want = np.mean([_reference_mmd2(x[r.choice(300, 100, replace=False)], y[r.choice(250, 100, replace=False)])
                  for _ in range(20)])
  np.testing.assert_allclose(a, want, rtol=1e-10)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
  rng = np.random.default_rng(6)
  mix = rng.normal(size=(16, 16)) / 4
  x, y = rng.normal(size=(500, 16)) @ mix, rng.normal(size=(500, 16)) @ mix
  same = fid.kid(x, y, num_subsets=20, subset_size=200)
  shifted = fid.kid(x, y + 0.5, num_subsets=20, subset_size=200)
  assert abs(same) < 0.02 * shifted
  assert shifted > 0.05


def test_statistics_roundtrip_without_pickle(tmp_path):
  rng = np.random.default_rng(8)
  mu, sigma = fid.feature_statistics(rng.normal(size=(20, 5)))
  path = tmp_path / "ref_stats.npz"
  fid.save_statistics(path, mu, sigma)
  mu2, sigma2 = fid.load_statistics(path)
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)

  np.savez(tmp_path / "objects.npz", mu=np.array([{"x": 1}], dtype=object), sigma=np.eye(1))
  with pytest.raises(ValueError, match="cannot read statistics"):
    fid.load_statistics(tmp_path / "objects.npz")
  np.savez(tmp_path / "other.npz", mean=mu)
  with pytest.raises(ValueError, match="missing"):
    fid.load_statistics(tmp_path / "other.npz")


def test_package_import_is_light():
  code = ("import sys, conprediff_jax.evaluation as e; "
          "print(sorted(m for m in ('torch', 'jax', 'flax', 'safetensors') if m in sys.modules))")
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
  assert out.strip() == "[]"
  assert evaluation.frechet_distance is fid.frechet_distance and evaluation.kid is fid.kid
  assert evaluation.DigitsMetric.__name__ == "DigitsMetric"  # Lazily imported on first use.
