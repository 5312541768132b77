"""The sorted solver on a TPU as one Pallas kernel: W2^2 of M point sets and its gradient in one pass over HBM.

XLA compiles the solver's sorting network, quantile overlaps and sums (sorted_solver._masked) as some twenty
fusions, each reading and writing whole [points, coordinates, sets] arrays: about 12 KB of HBM traffic per set
for 0.3 KB of inputs and gradients (the solver compiled alone for a v4 chip; docs/scaling.md). This
kernel reads a block of sets once, keeps everything else in the chip's vector memory, and writes the distances
and their gradient with respect to x.

The same arithmetic as sorted_solver._masked, written for the kernel: y (masked, constant) is sorted by the
min/max network; x is not sorted but ranked (rank_j = #{k < j: x_k <= x_j} + #{k > j: x_k < x_j}, a
permutation even with ties), so point j of x meets the quantile target of its rank and the gradient is routed
without a permutation: d W2^2 / d x_j = 2 / Q (x_j - target_rank(j)).

The gradient is for x only: y is a constant (the context loss's targets are), as `sorted_solver.solve_points_major`
documents for both of its paths. On a mesh (a `jax.set_mesh` context, as the train step runs) the kernel runs on
each device's own sets under `jax.shard_map`; a custom call is opaque to XLA's partitioner, which would otherwise
gather every set onto every chip.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from conprediff_jax.context import sorting_network

# Sets per kernel instance: a multiple of the TPU's 128 lanes; the largest of these that divides the sets and keeps
# coordinates x sets within BLOCK_VALUES, so that a block's arrays fit the 16 MiB of a v4 core's scoped vector
# memory (64 coordinates x 1024 sets, celebahq_tokens.py's codebook vectors, asked the compiler for 19.3 MiB).
BLOCKS = (1024, 512, 256, 128)
BLOCK_VALUES = 8192


def solve(x: jax.Array, y: jax.Array, mask: jax.Array | None, *, interpret: bool = False) -> jax.Array:
  """W2^2 [M] of x [Q, C, M] (uniform) against y [N, C, M] (uniform over `mask` [N, 1, M], or all of it), float32;
  differentiable in x. Under a mesh (`jax.set_mesh`), M is split over all its devices."""
  mask = jnp.ones(y.shape[:1] + (1,) + y.shape[2:], jnp.bool_) if mask is None else mask
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return _solve(x, y, mask, interpret)
  if x.shape[-1] % mesh.size:
    raise ValueError(f"sorted_kernel.solve: {x.shape[-1]} sets do not split over the mesh's {mesh.size} devices")
  sets = jax.P(None, None, mesh.axis_names)
  return jax.shard_map(functools.partial(_solve, interpret=interpret), mesh=mesh, in_specs=(sets, sets, sets),
                       out_specs=jax.P(mesh.axis_names), check_vma=False)(x, y, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _solve(x, y, mask, interpret):
  return _call(x, y, mask, interpret)[0]


def _solve_fwd(x, y, mask, interpret):
  distances, grad_x = _call(x, y, mask, interpret)
  return distances, (grad_x, y)


def _solve_bwd(interpret, residuals, cotangent):
  del interpret
  grad_x, y = residuals
  return grad_x * cotangent[None, None, :], jnp.zeros_like(y), None


_solve.defvjp(_solve_fwd, _solve_bwd)


def _call(x, y, mask, interpret):
  """(distances [M], their gradient in x [Q, C, M]) by the kernel over blocks of sets (M padded to 128s)."""
  x, y = x.astype(jnp.float32), jax.lax.stop_gradient(y.astype(jnp.float32))
  (q, c, m), n = x.shape, y.shape[0]
  weights, (x, y) = pad_sets(mask[:, 0].astype(jnp.float32), x, y)  # dropped below
  padded = x.shape[-1]
  block = next(b for b in BLOCKS if padded % b == 0 and (c * b <= BLOCK_VALUES or b == BLOCKS[-1]))
  points = lambda size: pl.BlockSpec((size, c, block), lambda i: (0, 0, i))
  distances, grad_x = pl.pallas_call(
      _kernel, grid=(padded // block,),
      in_specs=[points(q), points(n), pl.BlockSpec((n, block), lambda i: (0, i))],
      out_specs=[pl.BlockSpec((1, block), lambda i: (0, i)), points(q)],
      out_shape=[jax.ShapeDtypeStruct((1, padded), jnp.float32), jax.ShapeDtypeStruct((q, c, padded), jnp.float32)],
      cost_estimate=_cost(q, n, c, padded), interpret=interpret)(x, y, weights)
  return distances[0, :m], grad_x[..., :m]


def splits(sets: int) -> bool:
  """Whether a kernel can run on each device's own sets: the caller names a mesh (a Pallas kernel is opaque to XLA's
  partitioner, which would gather every set onto every chip) and `sets` split over its devices."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and sets % mesh.size == 0


def pad_sets(weights: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """The sets (every array's last axis) padded to a multiple of the 128 lanes: a padding set is one point, 0, of
  weight 1 (`weights` [N, ..., M], point 0 first), for the caller to drop."""
  m = weights.shape[-1]
  pad = -(-m // BLOCKS[-1]) * BLOCKS[-1] - m
  if not pad:
    return weights, arrays
  arrays = tuple(jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)]) for v in arrays)
  return jnp.concatenate([weights, jnp.zeros(weights.shape[:-1] + (pad,), weights.dtype).at[0].set(1.0)], -1), arrays


def _cost(q: int, n: int, c: int, sets: int) -> pl.CostEstimate:
  """What the kernel does, for XLA's cost analysis (which cannot see into it): set_flops per set, and its HBM
  traffic (x, y, the weights in; the distances and the gradient out)."""
  return pl.CostEstimate(flops=sets * set_flops(q, n, c), transcendentals=0,
                         bytes_accessed=4 * sets * (2 * q * c + n * c + n + 1))


def set_flops(q: int, n: int, c: int) -> int:
  """distance_and_gradient's element operations per set, counted from its code: the overlaps, 4 per pair of points;
  per coordinate the network's 38, the targets' 2 per pair, the ranks' and the routing's 4 per pair of x's points,
  and about 6 per point."""
  return 4 * q * n + c * (38 + 2 * q * n + 4 * q * q + 6 * (q + n))


def _kernel(x_ref, y_ref, w_ref, distances_ref, grad_ref):
  keep = [w_ref[j:j + 1, :] > 0 for j in range(y_ref.shape[0])]  # [1, block] each
  distances_ref[...], grads = distance_and_gradient([x_ref[j] for j in range(x_ref.shape[0])],
                                                    [y_ref[j] for j in range(y_ref.shape[0])], keep)
  for j, grad in enumerate(grads):
    grad_ref[j] = grad


def distance_and_gradient(xs: list[jax.Array], ys: list[jax.Array], keep: list[jax.Array]):
  """A block of sets inside a kernel: x's Q points and y's N points ([C, block] each), y's mask ([1, block] each) ->
  (W2^2 [1, block], its gradient in each of x's points [C, block])."""
  q, n = len(xs), len(ys)
  count = jnp.maximum(sum(k.astype(jnp.float32) for k in keep), 1.0)
  # y sorted, its dropped points last (+inf) and then zeroed; its quantile intervals follow from the count.
  ys = sorting_network.network_sort_list([jnp.where(keep[j], ys[j], jnp.inf) for j in range(n)])
  ys = [jnp.where(j < count, v, 0.0) for j, v in enumerate(ys)]
  hi_b = [jnp.minimum(j + 1.0, count) / count for j in range(n)]
  lo_b = [jnp.minimum(float(j), count) / count for j in range(n)]
  # target_i: the mean of y's quantile function over x's interval ((i, i + 1] / Q).
  targets = []
  for i in range(q):
    overlaps = [jnp.maximum(jnp.minimum((i + 1.0) / q, hi_b[j]) - jnp.maximum(i / q, lo_b[j]), 0.0) for j in range(n)]
    targets.append(q * sum(o * v for o, v in zip(overlaps, ys)))
  spread = sum((hi - lo) * v * v for hi, lo, v in zip(hi_b, lo_b, ys)) - sum(t * t for t in targets) / q
  fit, grads = 0.0, []
  for j in range(q):
    rank = sum((xs[k] <= xs[j] if k < j else xs[k] < xs[j]).astype(jnp.int32) for k in range(q) if k != j)
    diff = xs[j] - sum(jnp.where(rank == i, t, 0.0) for i, t in enumerate(targets))
    fit = fit + diff * diff
    grads.append((2.0 / q) * diff)
  return jnp.sum(fit / q + jnp.maximum(spread, 0.0), axis=0, keepdims=True), grads
