"""Squared 2-Wasserstein distance between batched weighted point sets, by a registered solver."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from conprediff_jax.context import exact_solver
from conprediff_jax.context import sinkhorn_solver
from conprediff_jax.context import sorted_solver
from conprediff_jax.context import weights as weights_lib

# name -> solve(x, y, a, b, **options) -> [...]; a and b are None, bool masks or probabilities.
SOLVERS: dict[str, Callable[..., jax.Array]] = {
    "sorted": sorted_solver.solve,
    "sinkhorn": sinkhorn_solver.solve,
    "exact": exact_solver.solve,
}


def wasserstein2(x: jax.Array, y: jax.Array, x_weights: jax.Array | None = None,
                 y_weights: jax.Array | None = None, solver: str = "sorted", **options) -> jax.Array:
  """W2^2 under the squared Euclidean cost, batched over leading dims.

  Args:
    x: [..., Q, C] points.
    y: [..., N, C] points; leading dims broadcast against x's.
    x_weights: [..., Q] or None (uniform). Normalised to sum 1; zero drops a point. A bool array is a mask
      (uniform over True), which the sorted solver handles on a cheaper path. Values of dropped points
      are ignored, even if not finite. A set must keep at least one point.
    y_weights: [..., N], as x_weights.
    solver: "sorted" (per-coordinate 1-D closed form; options num_projections, key), "sinkhorn" (entropic,
      options epsilon, iterations, lse_mode, debias, momentum, epsilon_init, epsilon_decay) or "exact"
      (SciPy on the host; tests only).
    **options: passed to the solver.

  Returns:
    [...] the squared distances.
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown Wasserstein solver {solver!r}; choose one of {sorted(SOLVERS)}")
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim < 2 or y.ndim < 2 or x.shape[-1] != y.shape[-1]:
    raise ValueError(f"expected x [..., Q, C] and y [..., N, C], got {x.shape} and {y.shape}")
  dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
  x, y = x.astype(dtype), y.astype(dtype)
  a = weights_lib.canonical(x_weights, x.shape[-2], dtype)
  b = weights_lib.canonical(y_weights, y.shape[-2], dtype)
  return SOLVERS[solver](x, y, a, b, **options)


def wasserstein2_points_major(x: jax.Array, y: jax.Array, y_mask: jax.Array, solver: str = "sorted",
                              **options) -> jax.Array:
  """`wasserstein2` of M sets laid out points-major, uniform over x: x [Q, C, M], y [N, C, M], y_mask bool
  [N, M]; returns [M]. The sorted solver reads this layout as it is; the others get it transposed."""
  if solver == "sorted":
    return sorted_solver.solve_points_major(x.astype(jnp.float32), y.astype(jnp.float32), y_mask[:, None], **options)
  return wasserstein2(jnp.transpose(x, (2, 0, 1)), jnp.transpose(y, (2, 0, 1)), y_weights=y_mask.T, solver=solver,
                      **options)
