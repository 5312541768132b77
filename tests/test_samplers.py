"""The multistep and Karras-sigma samplers against float64 NumPy loops of the published algorithms, and against
diffusers' schedulers run step by step on the same model and noise."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conprediff_jax.diffusion import gaussian, samplers

T = 1000
LINEAR = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.linear_betas(T)), "eps")


def _eps_model(x, t):
  """A toy eps-predictor, nonlinear in x and t (NumPy float64, torch or JAX arrays alike)."""
  lib = jnp if isinstance(x, jax.Array) else np
  if not isinstance(x, (jax.Array, np.ndarray)):
    import torch  # pylint: disable=g-import-not-at-top
    lib = torch
  t = t.reshape((-1,) + (1,) * (x.ndim - 1)) if hasattr(t, "reshape") and getattr(t, "ndim", 0) else t
  return lib.tanh(x) * (1.0 + t / 1000.0)


def _ours(sampler, spacing, steps, x_T, clip_x0=False, sigma_max=0.0):
  return np.asarray(samplers.sample(_eps_model, LINEAR, jax.random.key(0), x_T.shape, sampler=sampler, steps=steps,
                                    spacing=spacing, clip_x0=clip_x0, sigma_max=sigma_max,
                                    x_T=jnp.asarray(x_T, jnp.float32)))


def _unipc_update(x_s, m_s, s, t, earlier, alpha, sigma, lam, m_t=None):
  """UniPC's update from level s to t (Zhao et al. 2023, data prediction, B(h) = e^h - 1) in float64: UniP when
  m_t is None, else UniC with the model output m_t at t. `earlier`: the (level, model output) pairs before s."""
  h = lam[t] - lam[s]
  rks = np.array([(lam[k] - lam[s]) / h for k, _ in earlier])
  diffs = [(m_k - m_s) / rk for (_, m_k), rk in zip(earlier, rks)]
  b_h = np.expm1(-h)
  base = sigma[t] / sigma[s] * x_s - alpha[t] * b_h * m_s
  if m_t is None:  # UniP-p: rho = 1/2 for p = 2 (the paper's choice, as diffusers'), nothing for p = 1
    return base - alpha[t] * b_h * sum(0.5 * d for d in diffs)
  nodes = np.append(rks, 1.0)
  phi, factorial, b = b_h / -h - 1, 1, []
  for k in range(1, len(nodes) + 1):  # b_k = h phi_{k+1}(h) k! / B(h)
    b.append(phi * factorial / b_h)
    factorial *= k + 1
    phi = phi / -h - 1 / factorial
  rhos = np.linalg.solve(np.vander(nodes, increasing=True).T, b) if len(nodes) > 1 else [0.5]
  return base - alpha[t] * b_h * (sum(r * d for r, d in zip(rhos[:-1], diffs)) + rhos[-1] * (m_t - m_s))


def _reference(sampler, spacing, steps, x_T, clip_x0=False):
  """Karras et al.'s Algorithm 1 (Euler, Heun), Lu et al.'s DPM-Solver++(2M) Algorithm 2 and Zhao et al.'s UniPC
  in float64, written in the papers' own variables: sigma, x / sqrt(abar) for Euler and Heun; alpha, sigma,
  lambda for DPM-Solver++ and UniPC."""
  t, abar = samplers.noise_levels(LINEAR.alphas_cumprod, steps, spacing)

  def x0_of(x_vp, i):  # the model's clean estimate at level i, from the VP-scaled state
    a = abar[i]
    x0 = (x_vp - math.sqrt(1 - a) * _eps_model(x_vp, np.full(x_vp.shape[:1], t[i]))) / math.sqrt(a)
    return np.clip(x0, -1, 1) if clip_x0 else x0

  x = np.asarray(x_T, np.float64)
  if sampler in ("euler", "heun"):
    sig = np.sqrt((1 - abar) / abar)
    y = x / math.sqrt(abar[0])  # Karras et al.'s x: the VP state over sqrt(abar)
    for i in range(steps):
      d = (y - x0_of(y * math.sqrt(abar[i]), i)) / sig[i]
      y_next = y + (sig[i + 1] - sig[i]) * d
      if sampler == "heun" and sig[i + 1] > 0:
        d_next = (y_next - x0_of(y_next * math.sqrt(abar[i + 1]), i + 1)) / sig[i + 1]
        y_next = y + (sig[i + 1] - sig[i]) * (d + d_next) / 2
      y = y_next
    return y
  alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
  with np.errstate(divide="ignore"):
    lam = np.log(alpha / sigma)  # +inf at the last level
  if sampler == "unipc":
    outputs = []  # (level, model output) of every step so far
    x_corrected, order = x, 1  # what the previous step started from, and its order (none before step 0)
    for i in range(steps):
      m = x0_of(x, i)
      if i:  # correct the state the last step predicted, with the output evaluated there, at its order
        x = _unipc_update(x_corrected, outputs[-1][1], i - 1, i, outputs[-order:-1], alpha, sigma, lam, m_t=m)
      outputs.append((i, m))
      order = min(2, steps - i, i + 1)
      x_corrected = x
      x = _unipc_update(x, m, i, i + 1, outputs[-order:-1], alpha, sigma, lam)
    return x
  previous = None
  for i in range(steps):
    x0 = x0_of(x, i)
    h = lam[i + 1] - lam[i]
    if previous is None or i == steps - 1:
      d = x0
    else:
      r = (lam[i] - lam[i - 1]) / h
      d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous
    x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * (math.exp(-h) - 1) * d
    previous = x0
  return x


@pytest.mark.parametrize("sampler,spacing", [("dpm++2m", "linspace"), ("dpm++2m", "karras"), ("euler", "karras"),
                                             ("heun", "karras"), ("heun", "trailing"), ("unipc", "karras"),
                                             ("unipc", "trailing")])
def test_sampler_matches_the_float64_algorithm(sampler, spacing):
  x_T = np.random.default_rng(0).normal(size=(2, 4, 4, 1))
  for clip_x0 in (False, True):
    np.testing.assert_allclose(_ours(sampler, spacing, 7, x_T, clip_x0), _reference(sampler, spacing, 7, x_T, clip_x0),
                               rtol=1e-4, atol=1e-4)


def test_euler_is_ddim_at_eta_0_and_spacings_are_diffusers():
  rng = np.random.default_rng(1)
  x_t, x0, eps = (jnp.asarray(v, jnp.float32) for v in rng.normal(size=(3, 16)))
  for abar_t, abar_prev in [(0.1, 0.3), (0.5, 0.9), (0.9, 1.0)]:
    np.testing.assert_allclose(samplers.euler_update(x_t, abar_t, abar_prev, x0, eps, None),
                               samplers.ddim_update(x_t, abar_t, abar_prev, x0,
                                                    (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t),
                                                    jnp.zeros_like(x_t)),
                               rtol=1e-5, atol=1e-5)
  from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler  # pylint: disable=g-import-not-at-top
  betas = gaussian.linear_betas(T)
  for spacing in ("linspace", "trailing"):
    scheduler = DPMSolverMultistepScheduler(trained_betas=betas, timestep_spacing=spacing)
    scheduler.set_timesteps(9)
    np.testing.assert_array_equal(samplers.noise_levels(LINEAR.alphas_cumprod, 9, spacing)[0],
                                  scheduler.timesteps.numpy())
  euler = EulerDiscreteScheduler(trained_betas=betas, use_karras_sigmas=True)
  euler.set_timesteps(9)
  t, abar = samplers.noise_levels(LINEAR.alphas_cumprod, 9, "karras")
  np.testing.assert_allclose(t, euler.timesteps.numpy(), rtol=1e-4)  # theirs: float32 alphas_cumprod
  np.testing.assert_allclose(np.sqrt((1 - abar) / abar), euler.sigmas.numpy(), rtol=2e-4)
  with pytest.raises(ValueError, match="config.sample.spacing"):
    samplers.noise_levels(LINEAR.alphas_cumprod, 9, "leading")


@pytest.mark.parametrize("name", ["dpm++2m", "euler", "euler_sigma_max", "heun", "unipc"])
def test_sampler_matches_diffusers_scheduler_step_by_step(name):
  """The same eps model, initial noise and noise levels through diffusers' scheduler loop."""
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # pylint: disable=g-import-not-at-top
                         HeunDiscreteScheduler, UniPCMultistepScheduler)
  betas, steps = gaussian.linear_betas(T), 8
  scheduler, spacing = {
      "dpm++2m": (DPMSolverMultistepScheduler(trained_betas=betas, algorithm_type="dpmsolver++", solver_order=2,
                                              lower_order_final=True), "linspace"),
      "euler": (EulerDiscreteScheduler(trained_betas=betas, use_karras_sigmas=True), "karras"),
      "euler_sigma_max": (EulerDiscreteScheduler(trained_betas=betas, use_karras_sigmas=True, sigma_max=80.0),
                          "karras"),
      "heun": (HeunDiscreteScheduler(trained_betas=betas, use_karras_sigmas=True), "karras"),
      # diffusers rounds UniPC's Karras timesteps to integers: its linspace spacing is the comparable one.
      "unipc": (UniPCMultistepScheduler(trained_betas=betas), "linspace")}[name]
  scheduler.set_timesteps(steps)
  x_T = np.random.default_rng(2).normal(size=(2, 1, 4, 4))
  sample = torch.from_numpy(x_T).float() * scheduler.init_noise_sigma
  with torch.no_grad():
    for t in scheduler.timesteps:
      model_input = scheduler.scale_model_input(sample, t)
      sample = scheduler.step(_eps_model(model_input, t.float()), t, sample).prev_sample
  ours = _ours(name.removesuffix("_sigma_max"), spacing, steps, x_T.transpose(0, 2, 3, 1),
               sigma_max=80.0 if name.endswith("_sigma_max") else 0.0)
  # With the sigma_max cap the top level is an interpolated one, where diffusers' float32 log-sigma table shows.
  tolerance = 1e-2 if name.endswith("_sigma_max") else 1e-3
  np.testing.assert_allclose(ours, sample.numpy().transpose(0, 2, 3, 1), rtol=tolerance, atol=tolerance)


def test_new_samplers_are_deterministic_under_a_key_and_v_prediction_works():
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.cosine_betas(T)), "v")
  v_model = lambda x, t: 0.5 * jnp.tanh(x) * (1.0 + t[:, None, None, None] / 1000.0)
  for name in ("dpm++2m", "heun", "unipc"):
    run = jax.jit(lambda k, name=name: samplers.sample(v_model, diffusion, k, (2, 4, 4, 1), sampler=name, steps=6,
                                                       spacing="karras"))
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(np.asarray(a)).all() and np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
