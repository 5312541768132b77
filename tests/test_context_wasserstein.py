"""wasserstein2(): every solver against independent float64 references, plus gradients."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize
from scipy import special
from scipy import stats

from conprediff_jax.context import sorting_network
from conprediff_jax.context import wasserstein2


# ---------------------------------------------------------------------------------------------------------
# Independent references (float64 NumPy / SciPy).
# ---------------------------------------------------------------------------------------------------------
def quantile_w2_1d(x, y, a=None, b=None) -> float:
  """int_0^1 (F^-1 - G^-1)^2 dt, by walking the merged breakpoints of the two CDFs."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  a = np.full(len(x), 1.0) if a is None else np.asarray(a, np.float64)
  b = np.full(len(y), 1.0) if b is None else np.asarray(b, np.float64)
  x, a, y, b = x[a > 0], a[a > 0], y[b > 0], b[b > 0]
  ox, oy = np.argsort(x), np.argsort(y)
  xs, ys = x[ox], y[oy]
  ca, cb = np.cumsum(a[ox]) / a.sum(), np.cumsum(b[oy]) / b.sum()
  breaks = np.unique(np.clip(np.concatenate([[0.0, 1.0], ca, cb]), 0.0, 1.0))
  total = 0.0
  for lo, hi in zip(breaks[:-1], breaks[1:]):
    mid = 0.5 * (lo + hi)
    qx = xs[min(np.searchsorted(ca, mid), len(xs) - 1)]
    qy = ys[min(np.searchsorted(cb, mid), len(ys) - 1)]
    total += (hi - lo) * (qx - qy) ** 2
  return total


def per_coordinate_w2(x, y, a=None, b=None) -> float:
  return sum(quantile_w2_1d(x[:, c], y[:, c], a, b) for c in range(x.shape[1]))


def lp_w2(x, y, a=None, b=None) -> float:
  """Discrete OT as a linear program, constraints written out row by row."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  q, n = len(x), len(y)
  a = np.full(q, 1.0 / q) if a is None else np.asarray(a, np.float64) / np.sum(a)
  b = np.full(n, 1.0 / n) if b is None else np.asarray(b, np.float64) / np.sum(b)
  cost = np.array([[np.sum((x[i] - y[j]) ** 2) for j in range(n)] for i in range(q)])
  rows = []
  for i in range(q):
    rows.append([1.0 if k // n == i else 0.0 for k in range(q * n)])
  for j in range(n):
    rows.append([1.0 if k % n == j else 0.0 for k in range(q * n)])
  res = optimize.linprog(cost.ravel(), A_eq=np.array(rows), b_eq=np.concatenate([a, b]),
                         bounds=(0, None), method="highs")
  assert res.status == 0
  return res.fun


def assignment_w2(x, y) -> float:
  cost = np.sum((np.asarray(x, np.float64)[:, None] - np.asarray(y, np.float64)[None]) ** 2, -1)
  rows, cols = optimize.linear_sum_assignment(cost)
  return cost[rows, cols].mean()


def entropic_ot(x, y, b=None, eps=0.05):
  """OT_eps = min_P <P, C> + eps KL(P | a x b) and its gradient in x, by L-BFGS on the semi-dual in g."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if b is not None:
    y = y[np.asarray(b, bool)]
  log_b = np.full(len(y), -np.log(len(y)))
  cost = np.sum((x[:, None] - y[None]) ** 2, -1)
  # Row and column constants only shift the potentials: take them out so the optimiser works at O(1) scale.
  rows = cost.min(1, keepdims=True)
  cols = (cost - rows).min(0, keepdims=True)
  reduced = cost - rows - cols
  f_of = lambda g: -eps * special.logsumexp(log_b + (g - reduced) / eps, axis=1)  # the c-transform
  plan_of = lambda f, g: np.exp(log_b + (f[:, None] + g - reduced) / eps) / len(x)

  def objective(g):
    f = f_of(g)
    return -(f.mean() + np.exp(log_b) @ g), plan_of(f, g).sum(0) - np.exp(log_b)

  res = optimize.minimize(objective, np.zeros(len(y)), jac=True, method="L-BFGS-B",
                          options=dict(gtol=1e-13, ftol=1e-15, maxiter=5000))
  plan = plan_of(f_of(res.x), res.x)
  assert np.abs(plan.sum(0) - np.exp(log_b)).sum() < 1e-6
  value = -res.fun + rows.mean() + cols.mean()
  return value, 2 * (plan.sum(1)[:, None] * x - plan @ y)


def random_sets(seed, lead, q, n, c, low_count=3):
  """Uniform [-1, 1] points and a random mask keeping >= low_count points of y."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, lead + (q, c)).astype(np.float32)
  y = rng.uniform(-1, 1, lead + (n, c)).astype(np.float32)
  counts = rng.integers(low_count, n + 1, lead)
  keep = np.stack([rng.permutation(n) < k for k in counts.ravel()]).reshape(lead + (n,))
  return x, y, keep


# ---------------------------------------------------------------------------------------------------------
# sorted
# ---------------------------------------------------------------------------------------------------------
def test_network_sorts_every_zero_one_input():
  bits = np.array(list(itertools.product([0.0, 1.0], repeat=8)), np.float32)  # zero-one principle
  out = sorting_network.sort_along(jnp.asarray(bits), axis=1)
  np.testing.assert_array_equal(np.asarray(out), np.sort(bits, axis=1))
  assert len(sorting_network.NETWORK_8) == 19


@pytest.mark.parametrize("c", [1, 3])
def test_sorted_uniform_matches_reference(c):
  x, y, _ = random_sets(0, (2, 3), 8, 8, c)
  out = np.asarray(wasserstein2(x, y))
  assert out.shape == (2, 3)
  ref = np.array([[per_coordinate_w2(x[i, j], y[i, j]) for j in range(3)] for i in range(2)])
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  # The 1-D closed form for equal uniform sets: pair the sorted points.
  pairs = np.mean((np.sort(x, axis=-2) - np.sort(y, axis=-2)) ** 2, axis=-2).sum(-1)
  np.testing.assert_allclose(out, pairs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q,n,c", [(8, 8, 3), (6, 7, 1)])  # with and without a sorting network
def test_sorted_masked_and_weighted_match_reference(q, n, c):
  x, y, keep = random_sets(1, (6,), q, n, c)
  ref = np.array([per_coordinate_w2(x[i], y[i], b=keep[i]) for i in range(6)])
  np.testing.assert_allclose(np.asarray(wasserstein2(x, y, y_weights=keep)), ref, rtol=1e-5, atol=1e-6)
  # The same mask as float weights takes the general path.
  np.testing.assert_allclose(np.asarray(wasserstein2(x, y, y_weights=keep.astype(np.float32))), ref,
                             rtol=1e-5, atol=1e-6)
  # Masks on both sides, and unnormalised non-uniform weights on both sides.
  keep_x = np.ones((6, q), bool)
  keep_x[:, ::3] = False
  ref = np.array([per_coordinate_w2(x[i], y[i], keep_x[i], keep[i]) for i in range(6)])
  np.testing.assert_allclose(np.asarray(wasserstein2(x, y, keep_x, keep)), ref, rtol=1e-5, atol=1e-6)
  rng = np.random.default_rng(2)
  wa, wb = rng.uniform(0.1, 3.0, (6, q)) * keep_x, rng.uniform(0.1, 3.0, (6, n)) * keep
  ref = np.array([per_coordinate_w2(x[i], y[i], wa[i], wb[i]) for i in range(6)])
  out = wasserstein2(x, y, wa.astype(np.float32), wb.astype(np.float32))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q,n,c,m", [(8, 8, 3, 256), (8, 8, 64, 130), (6, 5, 2, 1030)])
def test_tpu_kernel_matches_the_reference_and_xla(q, n, c, m):
  """The Pallas kernel (run by its interpreter here: the same code a TPU compiles) against the per-coordinate
  reference, and its x-gradient against XLA's path (sorted_solver), on masked sets, with ties, with sets that are
  not a multiple of the kernel's block (padded) and with a point count that has no sorting network."""
  from conprediff_jax.context import sorted_kernel, sorted_solver  # pylint: disable=g-import-not-at-top
  x, y, keep = random_sets(21, (m,), q, n, c)
  x[:, 1] = x[:, 0]  # exact ties
  keep[:7] = False
  keep[:7, 3] = True  # sets with one point
  points = lambda v: jnp.asarray(np.transpose(v, (1, 2, 0)))  # [sets, P, C] -> [P, C, sets]
  mask = jnp.asarray(keep.T[:, None])
  got = sorted_kernel.solve(points(x), points(y), mask, interpret=True)
  ref = np.array([per_coordinate_w2(x[i], y[i], b=keep[i]) for i in range(m)])
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(np.random.default_rng(3).normal(size=m), jnp.float32)
  gradient = lambda solve: jax.grad(lambda v: jnp.sum(weights * solve(v)))(points(x))
  got = np.asarray(gradient(lambda v: sorted_kernel.solve(v, points(y), mask, interpret=True)))
  want = np.asarray(gradient(lambda v: sorted_solver._solve(v, points(y), None, mask)))
  # Tied points may meet their two targets either way round (both are subgradients): their sum is the same.
  np.testing.assert_allclose(got[2:], want[2:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[0] + got[1], want[0] + want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coordinates", [3, 64])
def test_tpu_kernel_runs_on_each_chips_sets(coordinates):
  """Compiled for a TPU under a mesh, the points-major solver is the kernel, once per chip on its own sets: no
  collective moves them; without a mesh it is XLA's path. 64 coordinates (a token model's codebook vectors) in blocks
  of 1024 sets asked for more vector memory than a TPU core has: the compile fails unless the blocks shrink."""
  from conprediff_jax import hardware, parallel  # pylint: disable=g-import-not-at-top
  from conprediff_jax.context import sorted_solver  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh((-1, 1), ("data", "fsdp"), devices=hardware.abstract_devices(
      hardware.parse_topology("v5e-4")))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, ("data", "fsdp")))
  sets = lambda size, dtype=jnp.float32: jax.ShapeDtypeStruct((8, size, 4 * 2048), dtype, sharding=split)
  loss = lambda x, y, b: jnp.sum(sorted_solver.solve_points_major(x, y, b))
  compiled = lambda: jax.jit(jax.value_and_grad(loss)).lower(sets(coordinates), sets(coordinates), sets(1, jnp.bool_)
                                                             ).compile().as_text()
  with jax.set_mesh(mesh):
    hlo = compiled()
  assert hlo.count('custom_call_target="tpu_custom_call"') == 1
  assert not re.search("all-gather|all-to-all|collective-permute", hlo)
  assert "tpu_custom_call" not in compiled()


def test_sorted_is_true_w2_in_one_dimension():
  x, y, keep = random_sets(3, (4,), 8, 8, 1)
  for i in range(4):
    lp = lp_w2(x[i], y[i], b=keep[i])
    assert float(wasserstein2(x[i], y[i], y_weights=keep[i])) == pytest.approx(lp, rel=1e-4, abs=1e-6)
    assert float(wasserstein2(x[i], y[i], y_weights=keep[i], solver="exact")) == pytest.approx(
        lp, rel=1e-4, abs=1e-6)


def test_scipy_w1_sanity():
  """scipy only has W1: a translate has W1 = |t| and W2^2 = t^2, and W1 <= W2 always (Jensen)."""
  rng = np.random.default_rng(4)
  x = rng.uniform(-1, 1, 8)
  assert stats.wasserstein_distance(x, x + 0.3) == pytest.approx(0.3, rel=1e-6)
  assert float(wasserstein2(x[:, None], x[:, None] + 0.3)) == pytest.approx(0.09, rel=1e-5)
  for _ in range(5):
    u, v = rng.uniform(-1, 1, 8), rng.uniform(-1, 1, 5)
    w2 = float(wasserstein2(u[:, None], v[:, None]))
    assert stats.wasserstein_distance(u, v) <= np.sqrt(w2) + 1e-6


def test_dropped_points_are_ignored_even_if_not_finite():
  x, y, keep = random_sets(6, (6,), 8, 8, 3)
  poisoned = np.where(keep[..., None], y, np.nan).astype(np.float32)
  probabilities = keep * np.random.default_rng(6).uniform(0.5, 1.0, keep.shape)  # zero where dropped
  for solver in ("sorted", "sinkhorn", "exact"):
    for weights in (keep, probabilities):  # each solver sets dropped points aside on its own path (mask, weights)
      clean = wasserstein2(x, y, y_weights=weights, solver=solver)
      dirty = wasserstein2(x, poisoned, y_weights=weights, solver=solver)
      np.testing.assert_allclose(np.asarray(dirty), np.asarray(clean), rtol=1e-6)
  gradient = jax.grad(lambda x: jnp.sum(wasserstein2(x, poisoned, y_weights=keep)))(jnp.asarray(x))
  assert np.all(np.isfinite(np.asarray(gradient)))


def test_leading_dims_broadcast():
  x, y, keep = random_sets(7, (6,), 8, 8, 3)
  out = wasserstein2(x[None], np.stack([y, y[::-1]]), y_weights=keep)
  assert out.shape == (2, 6)
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(wasserstein2(x, y, y_weights=keep)), rtol=1e-6)


def test_sliced_matches_numpy_with_same_directions():
  x, y, keep = random_sets(8, (6,), 8, 8, 3)
  key, k = jax.random.key(3), 16
  out = np.asarray(wasserstein2(x, y, y_weights=keep, num_projections=k, key=key))
  directions = np.asarray(jax.random.normal(key, (3, k)), np.float64)
  directions /= np.linalg.norm(directions, axis=0, keepdims=True)
  ref = [3 / k * per_coordinate_w2(x[i] @ directions, y[i] @ directions, b=keep[i]) for i in range(6)]
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


def test_sliced_scale_matches_per_coordinate_form_on_translations():
  """C * mean_k (theta_k . t)^2 -> |t|^2, the per-coordinate value for a translate."""
  x = np.random.default_rng(9).uniform(-1, 1, (8, 3)).astype(np.float32)
  shift = np.array([0.5, -0.2, 0.3], np.float32)
  sliced = float(wasserstein2(x, x + shift, num_projections=4000, key=jax.random.key(0)))
  assert float(wasserstein2(x, x + shift)) == pytest.approx(np.sum(shift**2), rel=1e-5)
  assert sliced == pytest.approx(np.sum(shift**2), rel=0.1)


def test_bad_arguments():
  x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
  with pytest.raises(ValueError, match="unknown Wasserstein solver"):
    wasserstein2(x, x, solver="hungarian")
  with pytest.raises(ValueError):
    wasserstein2(x, x[:, :1])
  with pytest.raises(ValueError, match="key"):
    wasserstein2(x, x, num_projections=4)
  with pytest.raises(ValueError):
    wasserstein2(x, x, y_weights=np.ones(5))


# ---------------------------------------------------------------------------------------------------------
# exact
# ---------------------------------------------------------------------------------------------------------
def test_exact_matches_linear_sum_assignment():
  x, y, _ = random_sets(10, (2, 3), 8, 8, 3)
  out = np.asarray(jax.jit(lambda x, y: wasserstein2(x, y, solver="exact"))(x, y))
  ref = np.array([[assignment_w2(x[i, j], y[i, j]) for j in range(3)] for i in range(2)])
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_exact_matches_independent_lp_on_masked_sets():
  x, y, keep = random_sets(11, (6,), 8, 8, 3)
  out = np.asarray(wasserstein2(x, y, y_weights=keep, solver="exact"))
  ref = [lp_w2(x[i], y[i][keep[i]]) for i in range(6)]
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
  # vmap goes through the callback too.
  vmapped = jax.vmap(lambda a, b, m: wasserstein2(a, b, y_weights=m, solver="exact"))(x, y, keep)
  np.testing.assert_allclose(np.asarray(vmapped), out, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# sinkhorn
# ---------------------------------------------------------------------------------------------------------
def test_sinkhorn_converges_to_exact_as_epsilon_shrinks():
  x, y, keep = random_sets(12, (6,), 8, 8, 3)
  exact = np.asarray(wasserstein2(x, y, y_weights=keep, solver="exact"))
  errors = []
  for eps in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01):
    out = wasserstein2(x, y, y_weights=keep, solver="sinkhorn", epsilon=eps, iterations=1000)
    errors.append(float(np.mean(np.abs(np.asarray(out) - exact) / exact)))
  print("sinkhorn mean relative error by epsilon (0.5 .. 0.01):", np.round(errors, 4))
  assert all(later <= 1.05 * earlier + 1e-3 for earlier, later in zip(errors, errors[1:]))
  assert errors[-1] < 0.03


@pytest.mark.parametrize("c", [1, 3])
def test_sinkhorn_error_at_default_settings(c):
  """Measured, for the record: uniform [-1, 1] data, 8 predictions vs 3..8 true neighbours."""
  x, y, keep = random_sets(13, (64,), 8, 8, c)
  exact = np.asarray(wasserstein2(x, y, y_weights=keep, solver="exact"))
  plain = np.asarray(wasserstein2(x, y, y_weights=keep, solver="sinkhorn"))
  debiased = np.asarray(wasserstein2(x, y, y_weights=keep, solver="sinkhorn", debias=True))
  rel, rel_debiased = np.abs(plain - exact) / exact, np.abs(debiased - exact) / exact
  print(f"C={c} eps=0.05, defaults: relative error median {np.median(rel):.3f} mean {rel.mean():.3f}; "
        f"debiased median {np.median(rel_debiased):.3f} mean {rel_debiased.mean():.3f}")
  assert np.all(np.isfinite(plain)) and np.all(np.isfinite(debiased))
  assert np.median(rel_debiased) < np.median(rel)


def test_sinkhorn_log_mode_survives_large_costs():
  x, y, keep = random_sets(14, (6,), 8, 8, 3)
  far = x + 2.0  # costs up to ~30, so exp(-C / eps) underflows in float32
  exact = np.asarray(wasserstein2(far, y, y_weights=keep, solver="exact"))
  out = np.asarray(wasserstein2(far, y, y_weights=keep, solver="sinkhorn"))
  np.testing.assert_allclose(out, exact, rtol=0.02)


PLAIN_50 = {"iterations": 50, "momentum": 1.0}  # the defaults before over-relaxation


def sinkhorn_value_and_grad(x, y, keep, **options):
  f = lambda x: wasserstein2(x, y, y_weights=keep, solver="sinkhorn", **options)
  value, pull = jax.vjp(f, jnp.asarray(x))
  return np.asarray(value), np.asarray(pull(jnp.ones_like(value))[0])


_REFERENCES = {}  # SciPy's OT_eps per input: each test scores two solver settings against the same references


def entropic_ot_batch(x, y, keep):
  key = (x.tobytes(), y.tobytes(), keep.tobytes())
  if key not in _REFERENCES:
    refs = [entropic_ot(x[i], y[i], keep[i]) for i in range(len(x))]
    _REFERENCES[key] = np.array([r[0] for r in refs]), np.stack([r[1] for r in refs])
  return _REFERENCES[key]


def relative_errors(x, y, keep, **options):
  """Per set: |value - OT_eps| / OT_eps and |grad - grad OT_eps| / |grad OT_eps| against SciPy."""
  value, grad = sinkhorn_value_and_grad(x, y, keep, **options)
  ref_value, ref_grad = entropic_ot_batch(x, y, keep)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
  grad_error = np.linalg.norm((grad - ref_grad).reshape(len(x), -1), axis=1)
  return (np.abs(value - ref_value) / np.abs(ref_value),
          grad_error / np.linalg.norm(ref_grad.reshape(len(x), -1), axis=1))


@pytest.mark.parametrize("c", [1, pytest.param(3, marks=pytest.mark.slow)])  # 3 channels: `-m slow`
def test_sinkhorn_defaults_converge_further_than_plain_50_iterations(c):
  """Over-relaxation: 20 iterations land nearer OT_eps than 50 plain ones did."""
  x, y, keep = random_sets(18, (128,), 8, 8, c)
  value, grad = relative_errors(x, y, keep)
  plain_value, plain_grad = relative_errors(x, y, keep, **PLAIN_50)
  print(f"C={c} vs OT_eps, share of sets with value > 1% / gradient > 20% off: defaults "
        f"{np.mean(value > 0.01):.3f} / {np.mean(grad > 0.2):.3f}, plain 50 iterations "
        f"{np.mean(plain_value > 0.01):.3f} / {np.mean(plain_grad > 0.2):.3f}")
  assert np.mean(value > 0.01) < 0.75 * np.mean(plain_value > 0.01)
  assert np.mean(grad > 0.2) <= np.mean(plain_grad > 0.2)
  assert np.median(grad) < 0.5 * np.median(plain_grad)
  # Plain settings are still plain Sinkhorn: 2,000 iterations converge to the SciPy optimum.
  converged, _ = relative_errors(x[:8], y[:8], keep[:8], iterations=2000, momentum=1.0)
  assert converged.max() < 1e-4


def adversarial_sets(name, c, lead=32):
  """Inputs that stress the accelerated loop: far apart, spread out, collinear, duplicated, sparse, or
  predictions sitting on their targets (a trained model)."""
  x, y, keep = random_sets(19, (lead,), 8, 8, c)
  rng = np.random.default_rng(20)
  if name == "shifted":  # early-training predictions far from the targets
    x = x + 10.0
  elif name == "spread":
    x = 3.0 * x
  elif name == "gaussian":
    x = rng.normal(0, 3, x.shape) + rng.normal(0, 3, (lead, 1, c))
  elif name == "collinear":
    direction = rng.normal(size=(lead, 1, c))
    x = rng.uniform(-1, 1, (lead, 8, 1)) * direction
    y = rng.uniform(-1, 1, (lead, 8, 1)) * direction + 0.01 * rng.normal(size=y.shape)
  elif name == "duplicates":
    x[:, 1::2], y[:, 1::2] = x[:, ::2], y[:, ::2]
  elif name == "two_targets":
    keep = np.zeros_like(keep)
    keep[:, :2] = True
  elif name == "on_targets":
    picks = np.stack([np.resize(rng.permutation(np.flatnonzero(k)), 8) for k in keep])
    x = np.take_along_axis(y, picks[..., None], 1) + 0.01 * rng.normal(size=x.shape)
  return x.astype(np.float32), y.astype(np.float32), keep


@pytest.mark.parametrize("c", [1, 3, 16])
@pytest.mark.parametrize("name", ["shifted", "spread", "gaussian", "collinear", "duplicates", "two_targets",
                                  "on_targets"])
def test_sinkhorn_over_relaxation_no_worse_than_plain_on_adversarial_sets(name, c):
  x, y, keep = adversarial_sets(name, c)
  value, grad = relative_errors(x, y, keep)
  plain_value, plain_grad = relative_errors(x, y, keep, **PLAIN_50)
  assert np.sum(value > 0.01) <= np.sum(plain_value > 0.01) + 1
  assert np.sum(grad > 0.2) <= np.sum(plain_grad > 0.2) + 1


def test_sinkhorn_annealing_keeps_the_fixed_point_and_helps_spread_sets():
  x, y, keep = adversarial_sets("spread", 3)
  converged, _ = relative_errors(x[:8], y[:8], keep[:8], iterations=2000, momentum=1.0, epsilon_init=10.0)
  assert converged.max() < 1e-4
  annealed, _ = relative_errors(x, y, keep, epsilon_init=10.0)
  value, _ = relative_errors(x, y, keep)
  assert np.sum(annealed > 0.01) < np.sum(value > 0.01)


@pytest.mark.parametrize("name", ["uniform", "spread", "collinear", "duplicates"])
def test_sinkhorn_last_plain_iteration_bounds_the_gradient(name):
  """Even with over-relaxation pushed to diverge (w = 1.9), the final plain f-update makes each row of the
  plan sum to a_i = 1/8, so |grad_i| <= 2 a_i max_j |x_i - y_j| and the value (a dual objective) stays at or
  below OT_eps. Without that step these sets give NaN."""
  x, y, keep = adversarial_sets(name, 3) if name != "uniform" else random_sets(21, (32,), 8, 8, 3)
  value, grad = sinkhorn_value_and_grad(x, y, keep, momentum=1.9)
  distance = np.sqrt(np.sum((x[:, :, None] - y[:, None]) ** 2, -1))
  bound = 2 / 8 * np.max(np.where(keep[:, None], distance, 0.0), axis=-1)
  assert np.all(np.linalg.norm(grad, axis=-1) <= 1.01 * bound)
  ref = np.array([entropic_ot(x[i], y[i], keep[i])[0] for i in range(len(x))])
  assert np.all(value <= ref * (1 + 1e-4) + 1e-6)


def test_sinkhorn_rejects_bad_acceleration_options():
  x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
  for options in ({"momentum": 2.0}, {"momentum": 0.0}, {"epsilon_init": 0.5}, {"epsilon_decay": 1.5}):
    with pytest.raises(ValueError, match="momentum"):
      wasserstein2(x, x, solver="sinkhorn", **options)


def test_sinkhorn_gradient_does_not_run_the_loop_backwards():
  x, y, keep = random_sets(17, (4,), 8, 8, 3)
  f = lambda x: wasserstein2(x, y, y_weights=keep, solver="sinkhorn").sum()
  forward, both = str(jax.make_jaxpr(f)(x)), str(jax.make_jaxpr(jax.value_and_grad(f))(x))
  loops = lambda jaxpr: jaxpr.count("scan[") + jaxpr.count("while[")
  assert loops(forward) >= 1 and loops(both) == loops(forward)


# ---------------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------------
def central_differences(f, x, step=1e-6):
  grad = np.zeros_like(x)
  for index in np.ndindex(*x.shape):
    up, down = x.copy(), x.copy()
    up[index] += step
    down[index] -= step
    grad[index] = (float(f(up)) - float(f(down))) / (2 * step)
  return grad


@pytest.mark.parametrize("solver,options,weights", [
    ("sorted", {}, None),
    ("sorted", {}, "mask"),
    ("sorted", {}, "float"),
    ("sorted", {"num_projections": 3, "key": 0}, "mask"),
    ("sinkhorn", {"epsilon": 0.1, "iterations": 400}, "mask"),
    # OT(x, x) in the debiased cost has a near-permutation plan, Sinkhorn's slowest case: over-relaxation
    # leaves it 6e-6 off after 400 iterations (plain: 1.5e-6), too far for these tolerances.
    ("sinkhorn", {"epsilon": 0.1, "iterations": 2000, "debias": True}, None),
    ("exact", {}, "mask"),
])
def test_gradients_match_finite_differences(solver, options, weights):
  with jax.enable_x64(True):
    x, y, keep = random_sets(15, (), 8, 8, 2)
    x, y = x.astype(np.float64), y.astype(np.float64)
    w = {None: None, "mask": keep, "float": keep * np.linspace(0.5, 2.0, 8)}[weights]
    if "key" in options:
      options = {**options, "key": jax.random.key(options["key"])}
    f = jax.jit(lambda x: wasserstein2(x, y, y_weights=w, solver=solver, **options))
    grad = np.asarray(jax.grad(f)(x))
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, central_differences(f, x), rtol=1e-4, atol=1e-6)


def test_gradients_finite_in_float32_with_ties_and_masks():
  x, y, keep = random_sets(16, (6,), 8, 8, 3)
  x[:, 1] = x[:, 0]  # exact ties
  y[:, 2] = y[:, 3]
  for solver in ("sorted", "sinkhorn"):
    grad = jax.grad(lambda x: wasserstein2(x, y, y_weights=keep, solver=solver).sum())(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_network_path_equals_general_sort(monkeypatch):
  """Last in the file: it clears JAX's caches, so the jitted solver retraces without the networks."""
  x, y, keep = random_sets(5, (6,), 8, 8, 3)
  fns = {  # the masked path sorts the unmasked x exactly as the uniform path does
      "masked": lambda x: wasserstein2(x, y, y_weights=keep).sum(),
      "weighted": lambda x: wasserstein2(x, y, y_weights=keep * 1.5 + 0.5).sum(),
  }
  with_network = {k: jax.value_and_grad(f)(x) for k, f in fns.items()}
  with monkeypatch.context() as patch:
    patch.setattr(sorting_network, "NETWORKS", {})
    jax.clear_caches()
    without = {k: jax.value_and_grad(f)(x) for k, f in fns.items()}
  jax.clear_caches()
  for k, (value, grad) in without.items():
    np.testing.assert_allclose(float(with_network[k][0]), float(value), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(with_network[k][1]), np.asarray(grad), rtol=1e-5, atol=1e-7)
