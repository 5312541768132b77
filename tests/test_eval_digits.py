"""FD-digits: the cached classifier is accurate and its Frechet distance orders real < blurred < noise."""

import os
import time

import numpy as np
import pytest
import scipy.ndimage

from conprediff_jax.data.digits import load_digits
from conprediff_jax.evaluation import digits_metric
from conprediff_jax.evaluation.digits_metric import DigitsMetric

pytestmark = pytest.mark.xdist_group("test_eval_digits")  # on one worker: its module fixture runs once

SIZE = 16  # The embedded default's image size.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("digits_cache")


@pytest.fixture(scope="module")
def metric(cache):
  return DigitsMetric.load_or_train(cache, SIZE, seed=0)


def test_classifier_accurate_on_held_out_split(metric):
  images, labels = metric.held_out()
  assert len(images) == 359
  accuracy = metric.accuracy(images, labels)
  print(f"\ndigits classifier held-out accuracy at {SIZE}px: {accuracy:.4f}")
  assert accuracy == pytest.approx(metric.test_accuracy)
  assert accuracy > 0.95
  predicted = metric.classify(images[:7])
  assert predicted.dtype == np.int32 and predicted.shape == (7,)


def test_cache_is_reused(metric, cache):
  path = os.path.join(cache, f"digits_classifier_{SIZE}px_seed0.npz")
  stamp = os.stat(path).st_mtime_ns
  start = time.perf_counter()
  again = DigitsMetric.load_or_train(cache, SIZE, seed=0)
  assert time.perf_counter() - start < 5.0
  assert os.stat(path).st_mtime_ns == stamp  # Loaded, not retrained.
  images = load_digits(SIZE)[0][:20]
  np.testing.assert_array_equal(again.features(images), metric.features(images))
  assert again.test_accuracy == metric.test_accuracy


def test_unusable_cache_is_rejected(metric, cache, tmp_path):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="unreadable"):
    digits_metric._load(str(junk), SIZE, 0)  # pylint: disable=protected-access
  good = os.path.join(cache, f"digits_classifier_{SIZE}px_seed0.npz")
  with pytest.raises(ValueError, match="made for"):
    digits_metric._load(good, SIZE, 1)  # pylint: disable=protected-access


def test_fd_orders_real_blurred_noise(metric):
  images, _ = load_digits(SIZE)
  perm = np.random.default_rng(0).permutation(len(images))
  half_a, half_b = images[perm[:len(images) // 2]], images[perm[len(images) // 2:]]
  reference = metric.statistics(half_a)
  blurred = scipy.ndimage.gaussian_filter(half_b, sigma=(0, 1.0, 1.0, 0))
  noise = np.random.default_rng(1).uniform(-1, 1, size=half_b.shape).astype(np.float32)
  fd_real = metric.fd(half_b, reference)
  fd_blurred = metric.fd(blurred, reference)
  fd_noise = metric.fd(noise, reference)
  print(f"\nFD-digits vs the other half: real {fd_real:.2f}, blurred {fd_blurred:.2f}, noise {fd_noise:.2f}; "
        f"real half vs all real {metric.fd(half_b):.2f}")
  assert 0 <= fd_real < fd_blurred < fd_noise
  assert fd_blurred > 3 * fd_real and fd_noise > 3 * fd_blurred


def test_kid_orders_real_blurred_noise_and_is_the_kid_of_the_reference_features(metric):
  from conprediff_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  images, _ = load_digits(SIZE)
  held_out = images[np.random.default_rng(2).permutation(len(images))[:600]]
  blurred = scipy.ndimage.gaussian_filter(held_out, sigma=(0, 1.0, 1.0, 0))
  noise = np.random.default_rng(3).uniform(-1, 1, size=held_out.shape).astype(np.float32)
  kid = {name: metric.kid(metric.features(x)) for name, x in
         (("real", held_out), ("blurred", blurred), ("noise", noise))}
  assert kid["real"] < kid["blurred"] < kid["noise"], kid
  assert abs(kid["real"]) < 0.1 * kid["blurred"], kid  # unbiased: near 0 for the same distribution
  real = metric.features(images)  # centred and scaled by the real digits' own statistics
  mean, scale = real.mean(0), np.std(real - real.mean(0))
  assert kid["real"] == pytest.approx(fid.kid((metric.features(held_out) - mean) / scale, (real - mean) / scale,
                                              subset_size=600), rel=1e-6)


def test_features_shape_and_input_checks(metric):
  feats = metric.features(np.zeros((3, SIZE, SIZE, 1), np.float32))
  assert feats.shape == (3, digits_metric.FEATURE_DIM) and feats.dtype == np.float64
  with pytest.raises(ValueError, match=r"\[N, 16, 16, 1\]"):
    metric.features(np.zeros((3, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match="labels"):
    metric.accuracy(np.zeros((3, SIZE, SIZE, 1), np.float32), np.zeros(4))


def test_precision_recall_against_a_brute_force_loop():
  """Kynkaenniemi et al.'s definition written out point by point: a sample counts for precision when it lies
  within some real point's distance to that point's k-th nearest real neighbour; recall, the same with roles
  swapped. Chunking is exercised by shrinking the chunk below the set sizes."""
  from conprediff_jax.evaluation import manifold  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  real = rng.normal(size=(70, 4))
  fake = rng.normal(loc=1.0, scale=0.8, size=(55, 4))

  def covered(manifold_points, queries, k):
    radius = [sorted(np.linalg.norm(p - q) for j, q in enumerate(manifold_points) if j != i)[k - 1]
              for i, p in enumerate(manifold_points)]
    return np.mean([any(np.linalg.norm(x - p) <= r for p, r in zip(manifold_points, radius)) for x in queries])

  want = (covered(real, fake, 3), covered(fake, real, 3))
  old = manifold._CHUNK  # pylint: disable=protected-access
  try:
    manifold._CHUNK = 16  # pylint: disable=protected-access
    got = manifold.precision_recall(real, fake, k=3)
  finally:
    manifold._CHUNK = old  # pylint: disable=protected-access
  np.testing.assert_allclose(got, want)
  assert 0 < got[0] < 1 and 0 < got[1] < 1, got  # neither trivially 0 nor 1 on these sets
  assert manifold.precision_recall(real, real[:40] + 5.0) == (0.0, 0.0)
  with pytest.raises(ValueError, match="more than k=3"):
    manifold.precision_recall(real, fake[:3])
