"""Multi-stride 8-neighbourhoods of every grid position, as one fused pad-and-slice op."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The fixed neighbour order: raster order over (dy, dx), the centre left out.
OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)


def validate_strides(strides: Sequence[int], height: int, width: int) -> tuple[int, ...]:
  """Returns strides as a tuple of ints; raises a one-line ValueError if one cannot fit the grid."""
  strides = tuple(strides)
  if not strides:
    raise ValueError("strides must name at least one stride")
  for s in strides:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
      raise ValueError(f"every stride must be a positive int, got {s!r}")
    if s >= height or s >= width:
      raise ValueError(f"stride {s} does not fit a {height}x{width} grid (each stride must be < H and < W)")
  return tuple(int(s) for s in strides)


def neighbour_mask(height: int, width: int, strides: Sequence[int]) -> np.ndarray:
  """Static bool [H, W, S, 8]: True where the neighbour lies inside the image."""
  rows = np.arange(height)[:, None, None, None]
  cols = np.arange(width)[None, :, None, None]
  scale = np.asarray(strides)[None, None, :, None]
  dy = np.asarray([o[0] for o in OFFSETS])[None, None, None, :]
  dx = np.asarray([o[1] for o in OFFSETS])[None, None, None, :]
  r, c = rows + scale * dy, cols + scale * dx
  return (r >= 0) & (r < height) & (c >= 0) & (c < width)


def neighbourhoods(y: jax.Array, strides: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Gathers the 8 neighbours of every position at every stride.

  Args:
    y: [..., H, W, C] values on the grid.
    strides: static strides s; neighbour k of stride s sits at offset s * OFFSETS[k].

  Returns:
    values [..., H, W, S, 8, C] (0 outside the image, never wrapped) and
    mask [..., H, W, S, 8] bool (False outside the image).
  """
  if y.ndim < 3:
    raise ValueError(f"neighbourhoods expects [..., H, W, C], got shape {y.shape}")
  values = jnp.moveaxis(shifted(y, strides, grid_axis=y.ndim - 3), 0, -2)  # [..., H, W, S*8, C]
  strides = tuple(strides)
  values = values.reshape(*values.shape[:-2], len(strides), len(OFFSETS), values.shape[-1])
  mask = jnp.broadcast_to(neighbour_mask(y.shape[-3], y.shape[-2], strides), values.shape[:-1])
  return values, mask


def shifted(y: jax.Array, strides: Sequence[int], grid_axis: int) -> jax.Array:
  """The neighbour of every position at every stride and offset, as [S * 8, *y.shape] (stride-major, then
  OFFSETS' order; 0 outside the grid, never wrapped): axes `grid_axis` and `grid_axis + 1` of y are the grid."""
  height, width = y.shape[grid_axis], y.shape[grid_axis + 1]
  strides = validate_strides(strides, height, width)
  pad = max(strides)
  # Pad once by the largest stride, then every neighbour is a static window: XLA fuses it into one op.
  padding = [(0, 0)] * y.ndim
  padding[grid_axis] = padding[grid_axis + 1] = (pad, pad)
  padded = jnp.pad(y, padding)
  return jnp.stack([
      jax.lax.slice_in_dim(
          jax.lax.slice_in_dim(padded, pad + s * dy, pad + s * dy + height, axis=grid_axis),
          pad + s * dx, pad + s * dx + width, axis=grid_axis + 1)
      for s in strides for dy, dx in OFFSETS])


def shifted_flat(y: jax.Array, strides: Sequence[int], height: int, width: int) -> jax.Array:
  """`shifted` for a grid flattened in raster order into y's last axis ([..., H * W] -> [S * 8, ..., H * W]): each
  neighbour is one shift of the flat axis, so the positions stay the minor axis (on a TPU a W of 32 as the minor axis
  fills a quarter of each tile). Where the neighbour lies outside the grid, the value is another position's (the
  shift wraps across rows) or 0: only for use where neighbour_mask drops those."""
  strides = validate_strides(strides, height, width)
  pad = max(strides) * (width + 1)
  padded = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(pad, pad)])
  size = height * width
  return jnp.stack([jax.lax.slice_in_dim(padded, pad + s * (dy * width + dx), pad + s * (dy * width + dx) + size,
                                         axis=y.ndim - 1)
                    for s in strides for dy, dx in OFFSETS])
