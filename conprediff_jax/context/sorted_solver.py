"""W2^2 by sorting: the exact 1-D closed form per coordinate (or per random projection), summed.

With C == 1 this is the true W2^2. With C > 1 it is the per-coordinate (sum-of-marginals) form: it compares
the C marginals of the two sets, a lower bound of the joint W2^2 that is blind to how coordinates co-vary.

The 1-D formula: W2^2 = int_0^1 (F^-1(t) - G^-1(t))^2 dt. With both sets sorted, point i of x owns the
quantile interval (A_{i-1}, A_i] of its cumulative weights, point j of y owns (B_{j-1}, B_j], and
W2^2 = sum_ij |overlap of the two intervals| * (x_i - y_j)^2. The Q x N overlap matrix has static shape,
so every case (uniform, masked, weighted) runs without data-dependent shapes or a merge of the CDFs.

Everything below works on a [P, C, M] layout (points, coordinates, the M flattened sets): each point and
coordinate is one contiguous slab of M values, so the sorting network, the overlaps and the sums are
elementwise loops that XLA vectorises. Slicing an axis of size 8 with a minor axis of size C after it
instead was up to ~10x slower on CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from conprediff_jax.context import sorted_kernel
from conprediff_jax.context import sorting_network
from conprediff_jax.context import unrolled
from conprediff_jax.context import weights as weights_lib


# Jitted so that eager calls do not dispatch the unrolled networks op by op; free inside an outer jit.
@functools.partial(jax.jit, static_argnames=("num_projections",))
def solve(x: jax.Array, y: jax.Array, a: jax.Array | None, b: jax.Array | None, *,
          num_projections: int = 0, key: jax.Array | None = None) -> jax.Array:
  """x [..., Q, C], y [..., N, C]; a, b None (uniform), bool masks or probabilities. Returns [...].

  num_projections=K > 0 slices instead: K random unit directions drawn from `key` (shared by every set in
  the batch), and the result is C * mean_k W2^2(projection k). The factor C puts it on the scale of the
  per-coordinate sum: a uniformly random unit direction keeps 1/C of a squared length on average, so for
  a translated set both forms give |t|^2.
  """
  directions, scale = _directions(x.shape[-1], num_projections, key, x.dtype)
  lead = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2], *(w.shape[:-1] for w in (a, b) if w is not None))
  if _is_float(a) or _is_float(b):  # the masked path sorts dropped points last and zeroes them itself
    x, y = weights_lib.zero_dropped(x, a), weights_lib.zero_dropped(y, b)
  x, y = _points_major(x, lead, directions), _points_major(y, lead, directions)
  a = None if a is None else _flat_minor(a, lead)  # [P, 1, M]
  b = None if b is None else _flat_minor(b, lead)
  return scale * _solve(x, y, a, b).reshape(lead)


def solve_points_major(x: jax.Array, y: jax.Array, b: jax.Array | None, *, num_projections: int = 0,
                       key: jax.Array | None = None) -> jax.Array:
  """`solve` on the solver's own layout, uniform over x: x [Q, C, M], y [N, C, M] (points, coordinates, the M
  sets), b None or a bool mask [N, 1, M]; returns [M]. For a caller that can make its sets in this layout: on a
  TPU, the [..., Q, C] layout's two small minor axes each fill a tile. Differentiable in x; y is a constant (the
  context loss's targets are). Compiled for a TPU under a mesh it is one Pallas kernel (sorted_kernel.py)."""
  directions, scale = _directions(x.shape[1], num_projections, key, x.dtype)
  y = jax.lax.stop_gradient(y)
  if num_projections:
    x, y = (jnp.einsum("pcm,ck->pkm", v, directions, precision=jax.lax.Precision.HIGHEST) for v in (x, y))
  return scale * jax.lax.platform_dependent(x, y, b, tpu=_on_tpu, default=_on_xla)


def _on_xla(x: jax.Array, y: jax.Array, b: jax.Array | None) -> jax.Array:
  return _solve(x, y, None, b)


def _on_tpu(x: jax.Array, y: jax.Array, b: jax.Array | None) -> jax.Array:
  """The kernel where the sets split over the caller's mesh (a Pallas kernel is opaque to XLA's partitioner: it
  needs the mesh named, as the trainer names it with `jax.set_mesh`), XLA's path otherwise."""
  return sorted_kernel.solve(x, y, b) if sorted_kernel.splits(x.shape[-1]) else _on_xla(x, y, b)


def _solve(x: jax.Array, y: jax.Array, a: jax.Array | None, b: jax.Array | None) -> jax.Array:
  """x [Q, C, M], y [N, C, M]; a, b None, bool masks or probabilities [Q or N, 1, M] -> [M]."""
  if _is_float(a) or _is_float(b):
    return _weighted(x, y, a, b)
  if a is None and b is None and x.shape[0] == y.shape[0]:
    return _uniform_equal(x, y)
  return _masked(x, y, a, b)


def _directions(size: int, num_projections: int, key: jax.Array | None, dtype) -> tuple[jax.Array, float]:
  """The directions [C, K] the coordinates are read along (the identity, or K random unit vectors) and the scale."""
  if num_projections < 0:
    raise ValueError(f"num_projections must be >= 0, got {num_projections}")
  if not num_projections:
    return jnp.eye(size, dtype=dtype), 1.0
  if key is None:
    raise ValueError("the sliced sorted solver (num_projections > 0) needs a `key`")
  directions = jax.random.normal(key, (size, num_projections), dtype)
  return directions / jnp.linalg.norm(directions, axis=0, keepdims=True), size / num_projections


def _points_major(v: jax.Array, lead: tuple[int, ...], directions: jax.Array) -> jax.Array:
  """[..., P, C] -> [P, K, M]: coordinates along `directions` [C, K], leading dims broadcast and flattened.

  Also a product when `directions` is the identity (exact at HIGHEST precision, C x C per value): XLA:CPU
  turns a plain transpose into a free relabelling of the input's memory, and the sorting network then
  runs on the slow layout (2x slower for the whole value-and-grad at C = 3).
  """
  v = jnp.broadcast_to(v, lead + v.shape[-2:])
  v = v.reshape((-1,) + v.shape[-2:])
  return jnp.einsum("mpc,ck->pkm", v, directions, precision=jax.lax.Precision.HIGHEST)


def _flat_minor(w: jax.Array, lead: tuple[int, ...]) -> jax.Array:
  """Weights [..., P] -> [P, 1, M], like _points_major (no gradient needed, so a plain transpose)."""
  w = jnp.broadcast_to(w, lead + w.shape[-1:])
  return w.reshape(-1, w.shape[-1]).T[:, None, :]


def _is_float(w: jax.Array | None) -> bool:
  return w is not None and w.dtype != jnp.bool_


def _uniform_equal(x: jax.Array, y: jax.Array) -> jax.Array:
  """Equal sizes, uniform weights: the sorted points pair up one to one."""
  xs = sorting_network.sort_along(x, 0)
  ys = sorting_network.sort_along(y, 0)
  return jnp.sum(unrolled.sum_leading(jnp.square(xs - ys)), axis=0) / x.shape[0]


def _masked(x: jax.Array, y: jax.Array, a: jax.Array | None, b: jax.Array | None) -> jax.Array:
  """Uniform over the unmasked points: the quantile intervals depend on the counts alone, not on the order."""
  xs, hi_a, lo_a = _sort_masked(x, a)
  ys, hi_b, lo_b = _sort_masked(y, b)
  overlap = _overlap(hi_a[:, None], lo_a[:, None], hi_b[None], lo_b[None])  # [Q, N, 1, M]
  # sum_ij O_ij (x_i - y_j)^2 = sum_i a_i (x_i - t_i)^2 + sum_ij O_ij (y_j - t_i)^2, with t_i the mean of
  # y's quantile function over x_i's interval. The x-dependent part is then as cheap as the equal-size
  # case, and the second term (y's spread within x's intervals, a constant when y is) equals
  # sum_j b_j y_j^2 - sum_i a_i t_i^2: O(Q + N) instead of O(Q N) terms, clamped at its true minimum 0.
  mass = hi_a - lo_a  # [Q, 1, M]
  target = jnp.stack([unrolled.sum_leading(o * ys) for o in overlap])  # [Q, C, M]
  target = target / jnp.where(mass > 0, mass, 1.0)
  fit = unrolled.sum_leading(mass * jnp.square(xs - target))  # [C, M]
  spread = (unrolled.sum_leading((hi_b - lo_b) * jnp.square(ys))
            - unrolled.sum_leading(mass * jnp.square(target)))
  return jnp.sum(fit + jnp.maximum(spread, 0.0), axis=0)


def _sort_masked(v: jax.Array, mask: jax.Array | None):
  """Sorted [P, C, M] (masked points moved to the end and zeroed), quantile intervals hi, lo [P, 1, M]."""
  size = v.shape[0]
  index = np.arange(size).reshape(size, 1, 1)
  if mask is None:
    hi, lo = (index + 1) / size, index / size
    return sorting_network.sort_along(v, 0), jnp.asarray(hi, v.dtype), jnp.asarray(lo, v.dtype)
  # +inf sorts masked points after every real one; they are zeroed afterwards so 0 * inf never appears.
  sorted_v = sorting_network.sort_along(jnp.where(mask, v, jnp.inf), 0)
  count = jnp.sum(mask, axis=0).astype(v.dtype)  # [1, M]
  sorted_v = jnp.where(index < count, sorted_v, 0.0)
  return sorted_v, jnp.minimum(index + 1, count) / count, jnp.minimum(index, count) / count


def _weighted(x: jax.Array, y: jax.Array, a: jax.Array | None, b: jax.Array | None) -> jax.Array:
  """General probabilities: each coordinate sorts its own weights along with its values."""
  xs, hi_a, lo_a = _sort_weighted(x, a)
  ys, hi_b, lo_b = _sort_weighted(y, b)
  overlap = _overlap(hi_a[:, None], lo_a[:, None], hi_b[None], lo_b[None])  # [Q, N, C, M]
  return jnp.sum(unrolled.sum_leading(overlap * jnp.square(xs[:, None] - ys[None]), 2), axis=0)


def _sort_weighted(v: jax.Array, w: jax.Array | None):
  """Sorted [P, C, M] with per-coordinate quantile intervals hi, lo [P, C, M]."""
  size = v.shape[0]
  if w is None:
    w = jnp.full((size, 1, 1), 1.0 / size, v.dtype)
  elif w.dtype == jnp.bool_:
    w = w.astype(v.dtype) / jnp.sum(w, axis=0).astype(v.dtype)
  w = jnp.broadcast_to(w, v.shape)
  sorted_v, sorted_w = sorting_network.sort_along(v, 0, payload=w)
  hi = jnp.cumsum(sorted_w, axis=0)
  lo = jnp.concatenate([jnp.zeros_like(hi[:1]), hi[:-1]], axis=0)
  return sorted_v, hi, lo


def _overlap(hi_a, lo_a, hi_b, lo_b):
  """Length of (lo_a, hi_a] intersected with (lo_b, hi_b]."""
  return jnp.maximum(jnp.minimum(hi_a, hi_b) - jnp.maximum(lo_a, lo_b), 0.0)
