"""DDPM ancestral and DDIM samplers over a (possibly respaced) timestep sequence, registered by name.

A sampler sees only a denoiser `apply(x_t, t) -> model_out`; it never sees training-only modules. Each step maps
(x_t, abar_t, abar_prev, x0, eps, noise) to x_prev by the published update:

- DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
- DDPM (Ho et al. 2020, eqs. 6-7, respaced as in Nichol & Dhariwal 2021): with beta = 1 - abar_t / abar_prev,
  mean = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t,
  variance = beta (1 - abar_prev) / (1 - abar_t); no noise on the final step.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from conprediff_jax.diffusion.gaussian import GaussianDiffusion


def ddim_update(x_t, abar_t, abar_prev, x0, eps, noise, *, eta: float = 0.0):
  sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar_t)) * jnp.sqrt(1 - abar_t / abar_prev)
  direction = jnp.sqrt(jnp.maximum(1 - abar_prev - sigma**2, 0.0)) * eps
  return jnp.sqrt(abar_prev) * x0 + direction + sigma * noise


def ddpm_update(x_t, abar_t, abar_prev, x0, eps, noise, *, eta: float = 1.0):
  del eps, eta
  beta = 1 - abar_t / abar_prev
  mean = (jnp.sqrt(abar_prev) * beta / (1 - abar_t)) * x0 + (jnp.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t)) * x_t
  variance = beta * (1 - abar_prev) / (1 - abar_t)
  return mean + jnp.sqrt(variance) * noise


SAMPLERS = {"ddim": ddim_update, "ddpm": ddpm_update}


def timestep_sequence(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` evenly spaced training timesteps, descending, ending at 0 (DDIM's uniform respacing)."""
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"config.sample.steps must be in [1, {num_timesteps}], got {steps}")
  return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32)


def sample(apply: Callable, diffusion: GaussianDiffusion, key: jax.Array, shape: tuple[int, ...], *,
           sampler: str = "ddim", steps: int = 50, eta: float = 0.0, clip_x0: bool = True,
           x_T: jax.Array | None = None) -> jax.Array:
  """Runs the reverse process from pure noise with `lax.fori_loop`; deterministic given `key`.

  `apply(x_t, t [B] int32) -> model_out`. With the last step's abar_prev = 1 the output is the predicted x0.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"config.sample.sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
  update = SAMPLERS[sampler]
  ts = timestep_sequence(diffusion.timesteps, steps)
  abar = diffusion.alphas_cumprod
  abar_t = jnp.asarray(abar[ts], jnp.float32)
  abar_prev = jnp.asarray(np.append(abar[ts[1:]], 1.0), jnp.float32)
  ts = jnp.asarray(ts)

  key_init, key_loop = jax.random.split(key)
  x = jax.random.normal(key_init, shape, jnp.float32) if x_T is None else x_T

  def body(i, x):
    t = jnp.full(shape[:1], ts[i], jnp.int32)
    x0, eps = diffusion.to_x0_eps(x, abar_t[i], apply(x, t))
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(abar_t[i]) * x0) / jnp.sqrt(1 - abar_t[i])
    noise = jax.random.normal(jax.random.fold_in(key_loop, i), shape, jnp.float32)
    return update(x, abar_t[i], abar_prev[i], x0, eps, noise, eta=eta)

  return jax.lax.fori_loop(0, steps, body, x)
