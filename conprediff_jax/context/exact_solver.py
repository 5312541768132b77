"""Exact discrete W2^2 through SciPy on the host: for tests and small checks, never the training path.

The optimal plan comes from a host callback (Hungarian assignment for equal-size uniform sets, a linear
program otherwise) and is held constant; the cost sum_ij P_ij |x_i - y_j|^2 is then computed in JAX, so
its gradient with respect to the points is the Danskin gradient (exact wherever the optimal plan is
unique). There is no gradient with respect to the weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from conprediff_jax.context import weights as weights_lib


def solve(x: jax.Array, y: jax.Array, a: jax.Array | None, b: jax.Array | None) -> jax.Array:
  """x [..., Q, C], y [..., N, C]; a, b None (uniform), bool masks or probabilities. Returns [...]."""
  x, y = weights_lib.zero_dropped(x, a), weights_lib.zero_dropped(y, b)
  a = weights_lib.as_probabilities(a, x.shape[-2], x.dtype)
  b = weights_lib.as_probabilities(b, y.shape[-2], y.dtype)
  lead = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2], a.shape[:-1], b.shape[:-1])
  x, y = jnp.broadcast_to(x, lead + x.shape[-2:]), jnp.broadcast_to(y, lead + y.shape[-2:])
  a, b = jnp.broadcast_to(a, lead + a.shape[-1:]), jnp.broadcast_to(b, lead + b.shape[-1:])
  plan_shape = jax.ShapeDtypeStruct(lead + (x.shape[-2], y.shape[-2]), x.dtype)
  plan = jax.pure_callback(_plans, plan_shape, *(jax.lax.stop_gradient(v) for v in (x, y, a, b)),
                           vmap_method="broadcast_all")
  squared = jnp.sum(jnp.square(x[..., :, None, :] - y[..., None, :, :]), axis=-1)
  return jnp.sum(plan * squared, axis=(-2, -1))


def _plans(x, y, a, b) -> np.ndarray:
  """Optimal plans [..., Q, N] for every set in the batch, in float64 on the host."""
  dtype = np.asarray(x).dtype
  x, y, a, b = (np.asarray(v, np.float64) for v in (x, y, a, b))
  lead, (q, n) = x.shape[:-2], (x.shape[-2], y.shape[-2])
  flat = zip(x.reshape(-1, q, x.shape[-1]), y.reshape(-1, n, y.shape[-1]), a.reshape(-1, q),
             b.reshape(-1, n))
  plans = [optimal_plan(*item) for item in flat]
  return np.stack(plans).reshape(lead + (q, n)).astype(dtype)


def optimal_plan(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Optimal plan for the squared Euclidean cost between (x, a) and (y, b)."""
  cost = np.sum(np.square(x[:, None, :] - y[None, :, :]), axis=-1)
  q, n = cost.shape
  if q == n and np.allclose(a, 1.0 / q) and np.allclose(b, 1.0 / n):
    rows, cols = optimize.linear_sum_assignment(cost)
    plan = np.zeros_like(cost)
    plan[rows, cols] = 1.0 / q
    return plan
  a, b = a / a.sum(), b / b.sum()  # equal masses, or the equality constraints are infeasible
  row_sums = np.kron(np.eye(q), np.ones((1, n)))
  col_sums = np.kron(np.ones((1, q)), np.eye(n))
  result = optimize.linprog(cost.ravel(), A_eq=np.vstack([row_sums, col_sums]),
                            b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
  if result.status != 0:
    raise RuntimeError(f"exact OT linear program failed: {result.message}")
  return result.x.reshape(q, n)
