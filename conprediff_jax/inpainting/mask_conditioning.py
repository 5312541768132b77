"""Mask-conditioned denoisers (`model.mask_conditional`): the UNet also reads the known pixels and the mask.

They are part of its condition (`cond`: "known_image", "known_mask"; conditioning.py), which the UNet appends to
its input along channels: [x_t, known pixels (0 where unknown), mask], 2C + 1 channels for C-channel images.
Training draws a mask per example (`random_known`); inpainting passes the real one; plain generation passes none,
which reads as nothing known (the null condition), and training covers it by making `cond_dropout` of its
examples fully unknown.
"""

import jax
import jax.numpy as jnp


def cond(images: jax.Array, known: jax.Array) -> dict:
  """The condition of inpainting `images` [B, H, W, C] where `known` [B, H, W, 1] (True = keep); the UNet reads
  only the known pixels."""
  return {"known_image": images, "known_mask": known}


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
