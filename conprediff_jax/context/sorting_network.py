"""Fixed sorting networks: on CPU, elementwise compare-swaps beat a general sort for tiny point sets.

They are fastest along a leading (major) axis, where every item is one contiguous slab. The backward
pass does not go back through the comparators (their min/max VJPs cost several times the forward): the
forward also tracks where every element came from, and the cotangent is routed back by a one-hot select.
"""

import functools

import jax
import jax.numpy as jnp

from conprediff_jax.context import unrolled

# An optimal 19-comparator network for 8 items, in 6 parallel layers. Its correctness is checked
# exhaustively on all 2**8 zero-one inputs in the tests (the zero-one principle).
NETWORK_8: tuple[tuple[int, int], ...] = (
    (0, 2), (1, 3), (4, 6), (5, 7),
    (0, 4), (1, 5), (2, 6), (3, 7),
    (0, 1), (2, 3), (4, 5), (6, 7),
    (2, 4), (3, 5),
    (1, 4), (3, 6),
    (1, 2), (3, 4), (5, 6),
)

NETWORKS: dict[int, tuple[tuple[int, int], ...]] = {8: NETWORK_8}


def sort_along(values: jax.Array, axis: int, payload: jax.Array | None = None):
  """Sorts `values` ascending along `axis`, differentiably; `payload` (not differentiated) moves alongside.

  Uses a network where one exists for the size, `lax.sort` otherwise. Returns the sorted values, or
  (sorted values, permuted payload) when a payload is given.
  """
  axis = axis % values.ndim
  if values.shape[axis] not in NETWORKS:
    if payload is None:
      return jnp.sort(values, axis=axis)
    payload = jnp.broadcast_to(payload, values.shape)
    return tuple(jax.lax.sort((values, payload), dimension=axis, num_keys=1))
  sorted_values = _network_sort(values, axis)
  if payload is None:
    return sorted_values
  payload = jnp.broadcast_to(payload, values.shape)
  _, (moved,) = _run_network(jax.lax.stop_gradient(values), [payload], axis)
  return sorted_values, moved


def _run_network(values: jax.Array, extras: list[jax.Array], axis: int):
  """Compare-swaps along `axis`; every array in `extras` (same shape) follows the values' moves."""
  size = values.shape[axis]
  take = lambda v: [jax.lax.index_in_dim(v, i, axis, keepdims=False) for i in range(size)]
  items, others = take(values), [take(e) for e in extras]
  if not extras:
    return jnp.stack(network_sort_list(items), axis=axis), []
  for i, j in NETWORKS[size]:
    keep = items[i] <= items[j]
    for column in [items] + others:
      column[i], column[j] = (jnp.where(keep, column[i], column[j]),
                              jnp.where(keep, column[j], column[i]))
  return jnp.stack(items, axis=axis), [jnp.stack(o, axis=axis) for o in others]


def network_sort_list(items: list[jax.Array]) -> list[jax.Array]:
  """The items (equal shapes) sorted elementwise, smallest first: min/max compare-swaps (cheaper than a compare and
  two selects), by the network for their count, or odd-even transposition where there is none. Not
  differentiated through (see _network_sort)."""
  items, size = list(items), len(items)
  pairs = NETWORKS.get(size) or [(i, i + 1) for r in range(size) for i in range(r % 2, size - 1, 2)]
  for i, j in pairs:
    items[i], items[j] = jnp.minimum(items[i], items[j]), jnp.maximum(items[i], items[j])
  return items


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _network_sort(values: jax.Array, axis: int) -> jax.Array:
  return _run_network(values, [], axis)[0]


def _network_sort_fwd(values, axis):
  origin = jax.lax.broadcasted_iota(jnp.int32, values.shape, axis)
  sorted_values, (origin,) = _run_network(values, [origin], axis)
  return sorted_values, origin


def _network_sort_bwd(axis, origin, cotangent):
  # cotangent_in[i] = sum_k [origin[k] == i] * cotangent[k], unrolled over k (see unrolled.py for why).
  origin, cotangent = jnp.moveaxis(origin, axis, 0), jnp.moveaxis(cotangent, axis, 0)
  size = origin.shape[0]
  routed = [unrolled.sum_leading(jnp.where(origin == i, cotangent, 0)) for i in range(size)]
  return (jnp.moveaxis(jnp.stack(routed), 0, axis),)


_network_sort.defvjp(_network_sort_fwd, _network_sort_bwd)
