"""Mask-conditioned denoisers (`model.mask_conditional`): the UNet also reads the known pixels and the mask.

Its input is [x_t, known pixels (0 where unknown), mask] along channels: 2C + 1 channels for C-channel images.
Training draws a mask per example (`random_known`); sampling passes the real one, or nothing known at all for plain
generation, which training covers by making `cond_dropout` of its examples fully unknown.
"""

import jax
import jax.numpy as jnp


def extra_channels(images: jax.Array, known: jax.Array) -> jax.Array:
  """[B, H, W, C + 1]: the known pixels (0 elsewhere) and the mask as 0/1."""
  return jnp.concatenate([jnp.where(known, images, 0.0), known.astype(images.dtype)], axis=-1)


def nothing_known(shape) -> jax.Array:
  """The extra channels for plain generation: [B, H, W, C + 1] zeros."""
  return jnp.zeros(shape[:-1] + (shape[-1] + 1,), jnp.float32)


def random_known(key: jax.Array, batch: int, size: int, none_rate: float) -> jax.Array:
  """bool [B, S, S, 1] training masks: a rectangle with sides of 20-80% of the image unknown (box and half-image
  holes); with probability 1/4 its complement instead (outpainting); with probability `none_rate` nothing known."""
  k_size, k_corner, k_invert, k_none = jax.random.split(key, 4)
  sides = jax.random.uniform(k_size, (batch, 2), minval=0.2 * size, maxval=0.8 * size)
  corner = jax.random.uniform(k_corner, (batch, 2)) * (size - sides)
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  inside = (centres >= corner[..., None]) & (centres < (corner + sides)[..., None])  # [B, 2, S]: rows, columns
  hole = inside[:, 0, :, None] & inside[:, 1, None, :]
  hole = jnp.where(jax.random.bernoulli(k_invert, 0.25, (batch, 1, 1)), ~hole, hole)
  known = ~hole & ~jax.random.bernoulli(k_none, none_rate, (batch, 1, 1))
  return known[..., None]
