"""The ConPreDiff context loss: mean W2^2 between predicted and true multi-stride neighbourhoods."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from conprediff_jax.context import decoder as decoder_lib
from conprediff_jax.context import head_kernel
from conprediff_jax.context import sorted_kernel
from conprediff_jax.context import wasserstein
# The package re-exports the function under the module's name, so import the function itself.
from conprediff_jax.context.neighbourhoods import OFFSETS, neighbour_mask, shifted_flat


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
    position_fraction: 1/g for an integer g that divides H*W: score one position, drawn uniformly and afresh each
      call, of every set of g positions H*W/g apart (raster order) of every example. Each position is scored with
      probability 1/g, so this is an unbiased estimate of the same mean at 1/g of the decoder's cost (1.0: every
      position). The draw is a one-hot selection within each set: no gather, and a batch split over devices is
      subsampled where it lies (a draw over all B*H*W positions gathered the whole batch onto every chip).
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
  group = set_size(position_fraction)
  targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
  batch, height, width, channels = targets.shape
  if example_weights is not None and example_weights.shape != (batch,):
    raise ValueError(f"example_weights must be [{batch}], got shape {example_weights.shape}")
  if (height * width) % group:
    raise ValueError(f"position_fraction 1/{group} needs a multiple of {group} grid positions, got {height}x{width}")
  # Every array the size of the grid keeps the positions as its minor axis, down to the solver's [points,
  # coordinates, sets] layout: on a TPU a small minor axis (Q, the 8 neighbours, C) fills a whole tile.
  # The head's first layer runs on every position, before the draw: on a (data, fsdp, model) mesh, XLA's
  # partitioner (jax 0.10.2) gave that layer wrong gradients when it ran on the drawn positions (the DiT's step in
  # tests/test_families.py). It is F x 2L per position, a small share of what the head costs.
  sets = height * width // group  # set n of an example: its positions n, n + sets, n + 2 sets, ... (raster order)
  moments = decoder.moments_of(features.astype(jnp.float32)).reshape(batch, group, sets, -1)
  values = shifted_flat(jnp.moveaxis(targets, -1, 0).reshape(channels, batch, -1), strides, height, width)
  values = values.reshape(len(strides), len(OFFSETS), channels, batch, group, sets)
  mask = jnp.asarray(neighbour_mask(height, width, strides).reshape(group, sets, len(strides), len(OFFSETS)))
  sample_key, solver_key, position_key = jax.random.split(key, 3)
  # One position of each set, as a one-hot contraction over the set (exact; a where on the random one-hot gave
  # wrong gradients on such a mesh as well).
  pick = jax.random.randint(position_key, (batch, 1, sets), 0, group) == jnp.arange(group)[:, None]  # [B, g, n]
  moments = jnp.einsum("bgn,bgnl->lbn", pick.astype(moments.dtype), moments)  # [2L, B, n]
  values = jnp.einsum("bgn,socbgn->ocbsn", pick.astype(values.dtype), values)  # [8, C, B, S, n]
  mask = jnp.transpose(jnp.any(pick[..., None, None] & mask, axis=1), (3, 0, 2, 1))  # [8, B, S, n]
  present = jnp.any(mask, axis=0)  # [B, S, n]: has at least one neighbour
  # An empty set has no distance: give it one placeholder point (whose value is ignored), then drop its term.
  mask = mask | (~present & (jnp.arange(len(OFFSETS)) == 0)[:, None, None, None])
  if solver_options.get("num_projections"):
    solver_options = {"key": solver_key, **solver_options}

  def on_xla(moments, values, mask):
    predictions = jnp.moveaxis(decoder.sample_points_major(moments, sample_key), 2, 3)  # [Q, C, B, S, n]
    # The sets flattened example-major, as the batch is split: a split axis inside the flattened one would be
    # gathered onto every chip.
    flat = lambda x: x.reshape(x.shape[:2] + (-1,))  # [points, C, B * S * n]
    distances = wasserstein.wasserstein2_points_major(
        flat(predictions), flat(values), mask.reshape(len(OFFSETS), -1), solver=solver, **solver_options)
    return distances.reshape(present.shape)

  def on_tpu(moments, values, mask):
    """The decoder and the sorted solver as one pair of kernels (head_kernel.py) where the positions split over the
    caller's mesh (a Pallas kernel is opaque to XLA's partitioner), XLA's path otherwise."""
    if solver != "sorted" or solver_options.get("num_projections") or not sorted_kernel.splits(batch * sets):
      return on_xla(moments, values, mask)
    # values [8, C, B, S, n] -> [8, S, C, B * n], mask [8, B, S, n] -> [8, S, B * n]: the stride (axis s) second.
    by_stride = lambda x, s: jnp.moveaxis(x, s, 1).reshape(x.shape[0], len(strides), *x.shape[1:s - 1], -1)
    noise = decoder.noise(sample_key, (batch, sets))  # as sample_points_major draws it
    flat = lambda x: x.reshape(x.shape[:-2] + (-1,))
    distances = head_kernel.distances(decoder, flat(moments), flat(noise), by_stride(values, 3),
                                      by_stride(mask, 2))  # [S, B * n]
    return jnp.moveaxis(distances.reshape(len(strides), batch, sets), 0, 1)

  distances = jax.lax.platform_dependent(moments, values, mask, tpu=on_tpu, default=on_xla)
  if example_weights is not None:
    distances = example_weights.astype(jnp.float32)[:, None, None] * distances
  return jnp.sum(jnp.where(present, distances, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def set_size(position_fraction: float) -> int:
  """g for position_fraction = 1/g; a one-line ValueError for any other fraction."""
  group = round(1.0 / position_fraction) if 0.0 < position_fraction <= 1.0 else 0
  if not group or abs(group * position_fraction - 1.0) > 1e-6:
    raise ValueError(f"position_fraction must be 1/g for an integer g >= 1 (1.0, 0.5, 0.25, ...), got "
                     f"{position_fraction}")
  return group
