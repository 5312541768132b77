"""RePaint (Lugmayr et al. 2022): inpainting with any unconditional Gaussian denoiser, no retraining.

The reverse process runs over the respaced timesteps of diffusion/samplers.py (`steps` of them). States are
indexed s = 0 (pure noise, at the noisiest timestep) .. steps (clean). Each reverse move s -> s+1 is an ancestral
DDPM step for the unknown pixels, and a fresh draw of q(x_{s+1} | x0) for the known ones, joined by the mask.
Joining alone leaves the two regions inconsistent; RePaint's resampling makes them agree: after every
`jump_length` reverse moves, the state is diffused forward by `jump_length` levels (q(x_{s-j} | x_s)) and the same
stretch is denoised again, `resamples - 1` extra times. `resamples=1` is the naive method (replacement only).
The last move lands on abar = 1, where the known pixels are the originals exactly.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import GaussianDiffusion


def schedule(steps: int, jump_length: int, resamples: int) -> np.ndarray:
  """int32 [M, 2]: the walk over states as (from, to) moves; to = from + 1 denoises, to = from - jump_length
  re-noises. Every state that is a multiple of `jump_length` (not 0, not the clean state) is left by a jump back
  `resamples - 1` times, each time after arriving from below."""
  if jump_length < 1 or resamples < 1:
    raise ValueError(f"config.inpaint.jump_length and resamples must be >= 1, got {jump_length}, {resamples}")
  jumps = {s: resamples - 1 for s in range(jump_length, steps, jump_length)}
  moves, s = [], 0
  while s < steps:
    moves.append((s, s + 1))
    s += 1
    if jumps.get(s, 0) > 0:
      jumps[s] -= 1
      moves.append((s, s - jump_length))
      s -= jump_length
  return np.asarray(moves, np.int32)


def diffuse_further(x, abar_from, abar_to, noise):
  """A draw of q(x_to | x_from) for abar_to <= abar_from: the forward process run on from x_from's noise level."""
  ratio = abar_to / abar_from
  return jnp.sqrt(ratio) * x + jnp.sqrt(1 - ratio) * noise


def inpaint(apply: Callable, diffusion: GaussianDiffusion, key: jax.Array, images: jax.Array, known: jax.Array, *,
            steps: int, jump_length: int = 10, resamples: int = 10, clip_x0: bool = True) -> jax.Array:
  """`images` [B, H, W, C] in [-1, 1] with their pixels `known` (bool, broadcastable: [B, H, W, 1]) kept; the rest
  filled by the denoiser `apply(x_t, t [B] int32) -> model_out`. Deterministic given `key`."""
  ts = samplers.timestep_sequence(diffusion.timesteps, steps)
  abar = jnp.asarray(np.append(diffusion.alphas_cumprod[ts], 1.0), jnp.float32)  # per state; the clean one last
  ts = jnp.asarray(np.append(ts, 0), jnp.int32)
  moves = jnp.asarray(schedule(steps, jump_length, resamples))
  known = jnp.broadcast_to(known, images.shape)
  key_init, key_loop = jax.random.split(key)

  def denoise(x, s, k):
    k_unknown, k_known = jax.random.split(k)
    t = jnp.full(images.shape[:1], ts[s], jnp.int32)
    x0, eps = diffusion.to_x0_eps(x, abar[s], apply(x, t))
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(abar[s]) * x0) / jnp.sqrt(1 - abar[s])
    unknown = samplers.ddpm_update(x, abar[s], abar[s + 1], x0, eps,
                                   jax.random.normal(k_unknown, x.shape, jnp.float32))
    noisy_known = (jnp.sqrt(abar[s + 1]) * images
                   + jnp.sqrt(1 - abar[s + 1]) * jax.random.normal(k_known, x.shape, jnp.float32))
    return jnp.where(known, noisy_known, unknown)

  def renoise(x, s, to, k):
    return diffuse_further(x, abar[s], abar[to], jax.random.normal(k, x.shape, jnp.float32))

  def body(x, i_move):
    i, (s, to) = i_move
    k = jax.random.fold_in(key_loop, i)
    return jax.lax.cond(to > s, lambda: denoise(x, s, k), lambda: renoise(x, s, to, k)), None

  x = jax.random.normal(key_init, images.shape, jnp.float32)
  x, _ = jax.lax.scan(body, x, (jnp.arange(len(moves)), moves))
  return x
