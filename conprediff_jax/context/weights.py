"""Point weights in the two forms the solvers accept: a bool mask (uniform over True) or probabilities."""

import jax
import jax.numpy as jnp


def canonical(weights: jax.Array | None, size: int, dtype) -> jax.Array | None:
  """None stays None (uniform), a bool mask stays a mask, anything else is normalised to sum 1.

  Masks are kept apart because the sorted solver has a cheaper path for them; a zero weight drops a point.
  """
  if weights is None:
    return None
  weights = jnp.asarray(weights)
  if weights.ndim < 1 or weights.shape[-1] != size:
    raise ValueError(f"weights of shape {weights.shape} do not match a set of {size} points")
  if weights.dtype == jnp.bool_:
    return weights
  weights = weights.astype(dtype)
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def as_probabilities(weights: jax.Array | None, size: int, dtype) -> jax.Array:
  """Float probabilities [..., size] from any canonical form."""
  if weights is None:
    return jnp.full((size,), 1.0 / size, dtype)
  if weights.dtype == jnp.bool_:
    weights = weights.astype(dtype)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)
  return weights


def zero_dropped(points: jax.Array, weights: jax.Array | None) -> jax.Array:
  """Sets points of zero weight to 0, so a non-finite value there cannot leak into any solver."""
  if weights is None:
    return points
  keep = weights if weights.dtype == jnp.bool_ else weights > 0
  return jnp.where(keep[..., None], points, jnp.zeros((), points.dtype))
