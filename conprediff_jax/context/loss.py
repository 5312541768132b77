"""The ConPreDiff context loss: mean W2^2 between predicted and true multi-stride neighbourhoods."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from conprediff_jax.context import decoder as decoder_lib
from conprediff_jax.context import wasserstein
# The package re-exports the function under the module's name, so import the function itself.
from conprediff_jax.context.neighbourhoods import neighbourhoods


def context_loss(decoder: decoder_lib.ContextDecoder, features: jax.Array, targets: jax.Array,
                 key: jax.Array, *, strides: Sequence[int], solver: str = "sorted",
                 position_fraction: float = 1.0, example_weights: jax.Array | None = None,
                 **solver_options) -> jax.Array:
  """mean over (b, i, s) of w_b W2^2(P-hat, P), computed in float32 (w_b = 1 without example_weights).

  Args:
    decoder: the context decoder; its strides and target size must match `strides` and `targets`.
    features: [B, H, W, F] denoiser features h (any float dtype, e.g. bf16).
    targets: [B, H, W, C] clean signal y; treated as a constant.
    key: draws the decoder's samples, the scored positions, and the projections of a sliced sorted solver.
    strides: the neighbourhood strides.
    solver: a name in wasserstein.SOLVERS; solver_options go to it.
    position_fraction: score this fraction of the B*H*W positions, drawn uniformly without replacement each
      call: an unbiased estimate of the same mean at a fraction of the decoder's cost (1.0: every position).
    example_weights: [B] non-negative weights of each example's terms (a noise-level weighting), or None. They
      scale the terms; the mean still divides by the number of terms, so weights below 1 also shrink the loss.

  Returns:
    scalar float32 loss. P is uniform over a position's in-image neighbours, P-hat uniform over Q samples. A
    (position, stride) with no neighbour inside the grid (the middle of a small grid at a large stride) has no P:
    it is left out of the mean.
  """
  strides = tuple(strides)
  if decoder.num_strides != len(strides):
    raise ValueError(f"decoder has {decoder.num_strides} strides, loss got strides={strides}")
  if decoder.target_dim != targets.shape[-1]:
    raise ValueError(f"decoder predicts {decoder.target_dim} channels, targets have {targets.shape[-1]}")
  if not 0.0 < position_fraction <= 1.0:
    raise ValueError(f"position_fraction must be in (0, 1], got {position_fraction}")
  targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
  values, mask = neighbourhoods(targets, strides)  # [B,H,W,S,8,C], [B,H,W,S,8]
  weights = None
  if example_weights is not None:
    if example_weights.shape != targets.shape[:1]:
      raise ValueError(f"example_weights must be [{targets.shape[0]}], got shape {example_weights.shape}")
    weights = jnp.broadcast_to(example_weights.astype(jnp.float32)[:, None, None, None], mask.shape[:4])
  sample_key, solver_key, position_key = jax.random.split(key, 3)
  if position_fraction < 1.0:
    features, values, mask, weights = _random_positions(position_key, position_fraction, features, values, mask,
                                                        weights)
  predictions = decoder(features.astype(jnp.float32), sample_key)  # [..., S, Q, C]
  if solver_options.get("num_projections"):
    solver_options = {"key": solver_key, **solver_options}
  present = jnp.any(mask, axis=-1)  # [..., S]: has at least one neighbour
  # An empty set has no distance: give it one placeholder point (whose value is ignored), then drop its term.
  mask = mask | (~present[..., None] & (jnp.arange(mask.shape[-1]) == 0))
  distances = wasserstein.wasserstein2(predictions, values, y_weights=mask, solver=solver, **solver_options)
  if weights is not None:
    distances = weights * distances
  return jnp.sum(jnp.where(present, distances, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def _random_positions(key, fraction, *arrays):
  """The same random subset of the B*H*W positions from each array (None stays None), flattened to one axis."""
  num = arrays[0].shape[0] * arrays[0].shape[1] * arrays[0].shape[2]
  keep = jax.random.choice(key, num, (max(1, round(fraction * num)),), replace=False)
  take = lambda x: None if x is None else x.reshape((num,) + x.shape[3:])[keep]
  return tuple(take(x) for x in arrays)
