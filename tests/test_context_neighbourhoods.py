"""neighbourhoods(): against a brute-force loop, borders, order, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conprediff_jax.context import neighbourhoods
from conprediff_jax.context.neighbourhoods import OFFSETS, neighbour_mask, shifted, shifted_flat

# The documented order, spelled out independently of the module's constant.
RASTER_ORDER = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def brute_force(y: np.ndarray, strides) -> tuple[np.ndarray, np.ndarray]:
  """Plain Python loops over every position, stride and offset."""
  *lead, height, width, channels = y.shape
  values = np.zeros((*lead, height, width, len(strides), 8, channels), y.dtype)
  mask = np.zeros((*lead, height, width, len(strides), 8), bool)
  for index in np.ndindex(*lead):
    for r in range(height):
      for c in range(width):
        for k, s in enumerate(strides):
          for n, (dy, dx) in enumerate(RASTER_ORDER):
            rr, cc = r + s * dy, c + s * dx
            if 0 <= rr < height and 0 <= cc < width:
              values[index + (r, c, k, n)] = y[index + (rr, cc)]
              mask[index + (r, c, k, n)] = True
  return values, mask


def test_order_is_raster():
  assert list(OFFSETS) == RASTER_ORDER


@pytest.mark.parametrize("shape,strides", [
    ((2, 3, 5, 7, 2), (1, 2, 3)),  # leading batch dims, non-square grid
    ((4, 6, 3), (2, 1)),  # no leading dims, unsorted strides
    ((1, 9, 4, 1), (3,)),
])
def test_matches_brute_force(shape, strides):
  y = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  values, mask = jax.jit(neighbourhoods, static_argnums=1)(jnp.asarray(y), strides)
  ref_values, ref_mask = brute_force(y, strides)
  assert values.shape == ref_values.shape and mask.shape == ref_mask.shape
  assert mask.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(mask), ref_mask)
  np.testing.assert_array_equal(np.asarray(values), ref_values)


def test_borders_never_wrap():
  y = jnp.asarray(np.random.default_rng(1).uniform(1.0, 2.0, (5, 6, 1)), jnp.float32)  # no zeros inside
  values, mask = neighbourhoods(y, (1, 4))
  # A corner keeps exactly 3 neighbours per stride; everything outside is masked and exactly 0.
  assert np.asarray(mask[0, 0]).sum(axis=-1).tolist() == [3, 3]
  assert np.all(np.asarray(values)[~np.asarray(mask)] == 0.0)
  assert np.all(np.asarray(values)[np.asarray(mask)] >= 1.0)
  # An interior position at stride 1 keeps all 8.
  assert bool(mask[2, 2, 0].all())


def test_keeps_dtype():
  y = jax.random.normal(jax.random.key(0), (2, 4, 4, 3), jnp.bfloat16)
  values, _ = neighbourhoods(y, (1,))
  assert values.dtype == jnp.bfloat16


@pytest.mark.parametrize("strides", [(1, 5), (4,), (0,), (), (1.5,)])
def test_rejects_bad_strides(strides):
  y = jnp.ones((5, 4, 1)) * 0.5
  with pytest.raises(ValueError) as err:
    neighbourhoods(y, strides)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("height,width,strides", [(5, 7, (1, 2, 3)), (4, 4, (1, 3))])
def test_flat_shifts_agree_wherever_the_neighbour_is_inside(height, width, strides):
  y = jax.random.normal(jax.random.key(0), (2, 3, height, width))  # [B, C, H, W]
  want = shifted(y, strides, grid_axis=2)  # [S*8, B, C, H, W]
  got = shifted_flat(y.reshape(2, 3, -1), strides, height, width).reshape(want.shape)
  inside = neighbour_mask(height, width, strides)  # [H, W, S, 8]
  inside = np.moveaxis(inside.reshape(height, width, -1), -1, 0)[:, None, None]  # [S*8, 1, 1, H, W]
  np.testing.assert_array_equal(np.where(inside, np.asarray(got), 0.0), np.asarray(want))
  assert not np.array_equal(np.asarray(got), np.asarray(want))  # outside the grid it wraps: masked by the caller
