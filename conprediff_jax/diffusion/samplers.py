"""Samplers of the reverse process, registered by name, over a spacing of noise levels, also registered by name.

A sampler sees only a denoiser `apply(x_t, t) -> model_out` (t float32 [B]: a training timestep, fractional on the
Karras spacing); it never sees training-only modules. It runs from pure noise at the spacing's first level down
to abar = 1, where its output is the clean sample, as one `lax.fori_loop`, deterministic given its key.

Spacings (`noise_levels`): the N training timesteps the model is evaluated at, highest noise first.
  uniform   round(linspace(T - 1, 0, N)): DDIM's uniform respacing, ending at t = 0
  linspace  round(linspace(0, T - 1, N + 1)), without 0, descending: diffusers' "linspace" for its multistep
            solvers (the last evaluation is at t ~ T / N, not at t = 0)
  trailing  round(arange(T, 0, -T / N)) - 1: diffusers' "trailing" (Lin et al. 2024)
  karras    sigma_i = (smax^(1/7) + i / (N - 1) (smin^(1/7) - smax^(1/7)))^7 between the schedule's sigma at
            T - 1 (or `sigma_max`, if smaller: EDM's 80) and at 0 (Karras et al. 2022),
            sigma = sqrt((1 - abar) / abar), t by interpolating log sigma
Then one last step to abar = 1 (sigma = 0).

Samplers (x0 is the model's clean estimate, clipped to [-1, 1] unless clip_x0=False; eps the noise it implies):
  ddim    Song et al. 2021, eq. 12: x' = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z,
          s = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')
  ddpm    Ho et al. 2020, eqs. 6-7 (respaced as in Nichol & Dhariwal 2021): with b = 1 - a / a', mean
          sqrt(a') b / (1 - a) x0 + sqrt(1 - b) (1 - a') / (1 - a) x_t, variance b (1 - a') / (1 - a)
  euler   Euler on the probability-flow ODE in Karras et al.'s variables (x / sqrt(a), sigma):
          x' = x + (s' - s) d, d = (x - x0) / s (algebraically DDIM at eta = 0; the spacing is what differs)
  heun    Karras et al. 2022, Algorithm 1 (deterministic): the Euler step corrected by the slope at its end,
          x' = x + (s' - s) (d + d') / 2; no correction on the last step (s' = 0): 2N - 1 evaluations
  dpm++2m DPM-Solver++(2M), Lu et al. 2022, Algorithm 2: with lambda = log(sqrt(a) / sqrt(1 - a)),
          h = lambda' - lambda, x' = (sigma' / sigma) x - alpha' (exp(-h) - 1) D, D = (1 + 1 / 2r) x0 - 1 / 2r x0_prev,
          r = h_prev / h; first order (D = x0) on the first and the last step, as diffusers' lower_order_final
  unipc   UniPC, Zhao et al. 2023 (UniP-2 predictor, UniC corrector, B(h) = e^h - 1 ("bh2"), data prediction,
          as diffusers' UniPCMultistepScheduler's defaults): each step first corrects the state the previous step
          predicted, using the model output just evaluated there (no extra evaluation), then predicts the next
          state from it by DPM-Solver++(2M)'s update; first order on the first and the last step
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from conprediff_jax.diffusion.gaussian import GaussianDiffusion

KARRAS_RHO = 7.0


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


def _karras_sigma(abar):
  return jnp.sqrt((1 - abar) / abar)


def euler_update(x_t, abar_t, abar_prev, x0, eps, noise, *, eta: float = 0.0):
  """One Euler step in Karras et al.'s variables, mapped back to x_t's scale."""
  del eps, noise, eta
  sigma, sigma_next = _karras_sigma(abar_t), _karras_sigma(abar_prev)
  x = x_t / jnp.sqrt(abar_t)
  x_next = x + (sigma_next - sigma) * (x - x0) / sigma
  return jnp.sqrt(abar_prev) * x_next


SINGLE_STEP = {"ddim": ddim_update, "ddpm": ddpm_update, "euler": euler_update}
SAMPLERS = ("ddim", "ddpm", "dpm++2m", "euler", "heun", "unipc")
SPACINGS = ("karras", "linspace", "trailing", "uniform")


def timestep_sequence(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` evenly spaced training timesteps, descending, ending at 0 (DDIM's uniform respacing)."""
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"config.sample.steps must be in [1, {num_timesteps}], got {steps}")
  return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32)


def noise_levels(alphas_cumprod: np.ndarray, steps: int, spacing: str = "uniform",
                 sigma_max: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """(t float64 [N], abar float64 [N + 1]): where the model is evaluated, and the noise level of each of those
  points followed by the final abar = 1. `sigma_max` > 0 caps the Karras spacing's largest sigma."""
  T = len(alphas_cumprod)
  if spacing not in SPACINGS:
    raise ValueError(f"config.sample.spacing must be one of {list(SPACINGS)}, got {spacing!r}")
  if spacing == "uniform":
    t = timestep_sequence(T, steps).astype(np.float64)
  elif not 1 <= steps <= T:
    raise ValueError(f"config.sample.steps must be in [1, {T}], got {steps}")
  elif spacing == "linspace":
    t = np.round(np.linspace(0, T - 1, steps + 1))[::-1][:-1]
  elif spacing == "trailing":
    t = np.round(np.arange(T, 0, -T / steps)) - 1
  else:
    log_sigmas = np.log(np.sqrt((1 - alphas_cumprod) / alphas_cumprod))  # increasing in t
    ramp = np.linspace(0, 1, steps)
    top = min(np.exp(log_sigmas[-1]), sigma_max) if sigma_max > 0 else np.exp(log_sigmas[-1])
    high, low = top ** (1 / KARRAS_RHO), np.exp(log_sigmas[0]) ** (1 / KARRAS_RHO)
    sigmas = (high + ramp * (low - high)) ** KARRAS_RHO
    t = np.interp(np.log(sigmas), log_sigmas, np.arange(T, dtype=np.float64))
    return t, np.append(1 / (1 + sigmas**2), 1.0)
  abar = np.interp(t, np.arange(T), alphas_cumprod)
  return t, np.append(abar, 1.0)


def sample(apply: Callable, diffusion: GaussianDiffusion, key: jax.Array, shape: tuple[int, ...], *,
           sampler: str = "ddim", steps: int = 50, eta: float = 0.0, spacing: str = "uniform",
           sigma_max: float = 0.0, clip_x0: bool = True, x_T: jax.Array | None = None) -> jax.Array:
  """Runs the reverse process from pure noise with `lax.fori_loop`; deterministic given `key`.

  `apply(x_t, t [B] float32) -> model_out`. The output is the last step's clean estimate (abar = 1).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"config.sample.sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
  t_np, abar_np = noise_levels(diffusion.alphas_cumprod, steps, spacing, sigma_max)
  t, abar = jnp.asarray(t_np, jnp.float32), jnp.asarray(abar_np, jnp.float32)
  key_init, key_loop = jax.random.split(key)
  x = jax.random.normal(key_init, shape, jnp.float32) if x_T is None else x_T

  def predict(x, i):
    """(x0, eps) of the model at level i."""
    a = abar[i]
    x0, eps = diffusion.to_x0_eps(x, a, apply(x, jnp.full(shape[:1], t[i])))
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    return x0, eps

  if sampler in SINGLE_STEP:
    update = SINGLE_STEP[sampler]

    def body(i, x):
      x0, eps = predict(x, i)
      noise = jax.random.normal(jax.random.fold_in(key_loop, i), shape, jnp.float32)
      return update(x, abar[i], abar[i + 1], x0, eps, noise, eta=eta)

    return jax.lax.fori_loop(0, steps, body, x)
  if sampler == "heun":
    return _heun(predict, abar, steps, x)
  if sampler == "unipc":
    return _unipc(predict, abar_np, steps, x)
  return _dpmpp_2m(predict, abar_np, steps, x)


def _heun(predict, abar, steps, x):
  def body(i, x):
    x0, _ = predict(x, i)
    euler = euler_update(x, abar[i], abar[i + 1], x0, None, None)
    x0_end, _ = predict(euler, i + 1)
    sigma, sigma_next = _karras_sigma(abar[i]), _karras_sigma(abar[i + 1])
    scaled, scaled_end = x / jnp.sqrt(abar[i]), euler / jnp.sqrt(abar[i + 1])
    slope = ((scaled - x0) / sigma + (scaled_end - x0_end) / sigma_next) / 2
    return jnp.sqrt(abar[i + 1]) * (scaled + (sigma_next - sigma) * slope)

  x = jax.lax.fori_loop(0, steps - 1, body, x)  # the last step ends at sigma = 0: Euler, no correction
  x0, _ = predict(x, steps - 1)
  return euler_update(x, abar[steps - 1], abar[steps], x0, None, None)


def _dpmpp_2m_coefficients(abar: np.ndarray, steps: int):
  """DPM-Solver++(2M)'s update from level i to i + 1, computed once in float64 (the levels are fixed):
  x_{i+1} = keep_i x_i + push_i (now_i x0_i - before_i x0_{i-1}); also lambda = log(alpha / sigma) at levels
  0..steps - 1. First order (now 1, before 0) on the first and the last step."""
  alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
  decay = (sigma[1:] * alpha[:-1]) / (alpha[1:] * sigma[:-1])  # exp(-h): finite at abar = 1, where lambda is not
  keep, push = sigma[1:] / sigma[:-1], alpha[1:] * (1 - decay)
  lam = np.log(alpha[:-1] / sigma[:-1])
  now, before = np.ones(steps), np.zeros(steps)
  if steps > 2:
    half_over_r = 0.5 * (lam[2:] - lam[1:-1]) / (lam[1:-1] - lam[:-2])  # 1 / 2r, r = h_prev / h
    now[1:-1], before[1:-1] = 1 + half_over_r, half_over_r
  return keep, push, now, before, lam


def _dpmpp_2m(predict, abar: np.ndarray, steps, x):
  keep, push, now, before, _ = _dpmpp_2m_coefficients(abar, steps)
  keep, push, now, before = (jnp.asarray(v, jnp.float32) for v in (keep, push, now, before))

  def body(i, carry):
    x, x0_prev = carry
    x0, _ = predict(x, i)
    return keep[i] * x + push[i] * (now[i] * x0 - before[i] * x0_prev), x0

  return jax.lax.fori_loop(0, steps, body, (x, jnp.zeros_like(x)))[0]


def _unipc(predict, abar: np.ndarray, steps, x):
  """UniPC-2 (bh2) with coefficients computed once in float64. With m_i the clean estimate at level i, evaluated at
  the predicted state x_i, step i first corrects x_i into xc_i = cx_i x_i + cb_i xc_{i-1} + c0_i m_i + c1_i m_{i-1}
  + c2_i m_{i-2}, then predicts x_{i+1} = keep_i xc_i + p0_i m_i + p1_i m_{i-1}: UniP-2 (rho = 1/2) is
  DPM-Solver++(2M)'s update, first order on the first and the last step."""
  alpha = np.sqrt(abar)
  keep, push, now, before, lam = _dpmpp_2m_coefficients(abar, steps)
  p0, p1 = push * now, -push * before
  second_order = (np.arange(steps) > 0) & (np.arange(steps) < steps - 1)  # the predictors' (as `now`, `before`)

  cx, cb, c0, c1, c2 = np.ones(steps), *np.zeros((4, steps))  # step 0 has nothing to correct: xc_0 = x_0
  for i in range(1, steps):  # UniC over the previous step (from level i - 1 to i), of that step's order
    h = lam[i] - lam[i - 1]
    b_h = np.expm1(-h)  # bh2's B(h); also h phi_1 in the data-prediction form
    phi_2 = b_h / -h - 1
    b = np.array([phi_2, (phi_2 / -h - 0.5) * 2]) / b_h  # the right-hand side of UniC's order conditions
    if not second_order[i - 1]:
      rho_prev, rho_now = 0.0, 0.5
    else:
      r = (lam[i - 2] - lam[i - 1]) / h
      rho_prev, rho_now = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), b)
      rho_prev /= r
    scale = -alpha[i] * b_h  # x_c = base - alpha B(h) (rho_prev (m_{i-2} - m_{i-1}) + rho_now (m_i - m_{i-1}))
    cx[i], cb[i] = 0.0, keep[i - 1]
    c0[i], c1[i], c2[i] = scale * rho_now, push[i - 1] - scale * (rho_prev + rho_now), scale * rho_prev
  coefficients = [jnp.asarray(v, jnp.float32) for v in (cx, cb, c0, c1, c2, keep, p0, p1)]

  def body(i, carry):
    x, x_corrected_prev, m_prev, m_prev2 = carry
    cx, cb, c0, c1, c2, keep, p0, p1 = (v[i] for v in coefficients)
    m, _ = predict(x, i)
    x_corrected = cx * x + cb * x_corrected_prev + c0 * m + c1 * m_prev + c2 * m_prev2
    return keep * x_corrected + p0 * m + p1 * m_prev, x_corrected, m, m_prev

  zeros = jnp.zeros_like(x)
  return jax.lax.fori_loop(0, steps, body, (x, zeros, zeros, zeros))[0]
