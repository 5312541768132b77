"""Schedules, targets and sampler updates against float64 NumPy recomputations of the published equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conprediff_jax.diffusion import gaussian, samplers


def test_linear_schedule_matches_ddpm_paper():
  betas = gaussian.linear_betas(1000)
  np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02])
  np.testing.assert_allclose(np.diff(betas), np.full(999, (0.02 - 1e-4) / 999), rtol=1e-9)


def test_cosine_schedule_matches_closed_form():
  t_total, s = 1000, 0.008
  f = np.cos((np.arange(t_total + 1) / t_total + s) / (1 + s) * math.pi / 2) ** 2
  abar = np.cumprod(1 - gaussian.cosine_betas(t_total))
  unclipped = (f[1:] / f[0])[:-20]  # the last betas are clipped at 0.999 by design
  np.testing.assert_allclose(abar[:-20], unclipped, rtol=1e-10)
  assert gaussian.cosine_betas(t_total).max() <= 0.999


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_q_sample_target_and_inversion(prediction):
  rng = np.random.default_rng(0)
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.cosine_betas(1000)), prediction)
  x0 = rng.uniform(-1, 1, (4, 5, 5, 2)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 10, 500, 999])
  abar = diffusion.alphas_cumprod[t][:, None, None, None]
  x_t_ref = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
  target_ref = noise if prediction == "eps" else np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0
  x_t = diffusion.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  np.testing.assert_allclose(x_t, x_t_ref, atol=1e-5)
  np.testing.assert_allclose(diffusion.target(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)), target_ref,
                             atol=1e-5)
  # A perfect prediction recovers x0 and the noise.
  x0_hat, eps_hat = diffusion.to_x0_eps(x_t, jnp.asarray(abar, jnp.float32), jnp.asarray(target_ref))
  keep = t < 999  # at t=999 sqrt(abar) ~ 6e-3 amplifies float32 rounding
  np.testing.assert_allclose(np.asarray(x0_hat)[keep], x0[keep], atol=2e-3)
  np.testing.assert_allclose(eps_hat, noise, atol=2e-3)


def test_loss_is_mse_to_target():
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.linear_betas(100)), "eps")
  x0 = jax.random.uniform(jax.random.key(0), (3, 4, 4, 1), minval=-1, maxval=1)
  calls = {}

  def model(x_t, t, labels, rngs=None):
    del labels, rngs
    calls["x_t"], calls["t"] = x_t, t
    return 0.5 * x_t, x_t

  out = diffusion.loss(model, {"image": x0}, jax.random.key(1))
  k_t, k_noise, _ = jax.random.split(jax.random.key(1), 3)
  noise = jax.random.normal(k_noise, x0.shape)
  x_t = np.asarray(calls["x_t"])
  np.testing.assert_allclose(out.loss, np.mean((0.5 * x_t - np.asarray(noise)) ** 2), rtol=1e-5)
  t = jax.random.randint(k_t, (3,), 0, 100)
  np.testing.assert_array_equal(calls["t"], t)
  np.testing.assert_array_equal(out.clean, x0)
  assert out.features.shape == x0.shape
  # The denoised estimate and the kept signal, recomputed in float64 from the eps-parameterisation.
  abar = diffusion.alphas_cumprod[np.asarray(t)]
  np.testing.assert_allclose(out.signal, abar, rtol=1e-6)
  a = abar[:, None, None, None]
  np.testing.assert_allclose(out.denoised, (x_t - np.sqrt(1 - a) * 0.5 * x_t) / np.sqrt(a), rtol=1e-4, atol=1e-5)
  given = diffusion.loss(model, {"image": x0}, jax.random.key(1), t=jnp.array([5, 50, 99]))
  np.testing.assert_array_equal(calls["t"], [5, 50, 99])
  np.testing.assert_allclose(given.signal, diffusion.alphas_cumprod[[5, 50, 99]], rtol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_the_x0_error_by_min_snr_gamma(prediction):
  """In x0 space, Min-SNR-gamma's loss is min(SNR_t, gamma) |x0_hat - x0|^2: recomputed here through the x0 that
  each output implies (to_x0_eps, float32), not through the weight formula."""
  gamma, rng = 5.0, np.random.default_rng(1)
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.cosine_betas(1000)), prediction, gamma)
  t = np.array([0, 30, 200, 500, 990])
  x_t, out, target = (rng.normal(size=(5, 3, 3, 1)) for _ in range(3))
  abar = diffusion.alphas_cumprod[t][:, None, None, None]
  x0_hat = np.asarray(diffusion.to_x0_eps(x_t, abar, out)[0])
  x0 = np.asarray(diffusion.to_x0_eps(x_t, abar, target)[0])
  snr = diffusion.alphas_cumprod[t] / (1 - diffusion.alphas_cumprod[t])
  expected = np.minimum(snr, gamma) * np.sum((x0_hat - x0) ** 2, axis=(1, 2, 3))
  weighted = diffusion.loss_weights()[t] * np.sum((out - target) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(weighted, expected, rtol=1e-4)
  assert len({round(w, 6) for w in diffusion.loss_weights()[t]}) > 2  # really not constant
  np.testing.assert_array_equal(gaussian.GaussianDiffusion(diffusion.alphas_cumprod, prediction).loss_weights(), 1.0)


def _reference_ddim(x_t, abar_t, abar_prev, x0, eps, z, eta):
  """Song et al. 2021, eq. 12, written out in float64."""
  sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
  return math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev - sigma**2) * eps + sigma * z


def _reference_ddpm(x_t, abar_t, abar_prev, x0, z):
  """Ho et al. 2020, eq. 7 posterior q(x_{t-1} | x_t, x0) with alpha_t = abar_t / abar_prev."""
  alpha = abar_t / abar_prev
  beta = 1 - alpha
  mean = math.sqrt(abar_prev) * beta / (1 - abar_t) * x0 + math.sqrt(alpha) * (1 - abar_prev) / (1 - abar_t) * x_t
  return mean + math.sqrt((1 - abar_prev) / (1 - abar_t) * beta) * z


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_update_matches_paper(eta):
  rng = np.random.default_rng(1)
  x_t, x0, eps, z = rng.normal(size=(4, 16))
  for abar_t, abar_prev in [(0.1, 0.3), (0.5, 0.9), (0.95, 0.999)]:
    ours = samplers.ddim_update(jnp.asarray(x_t), abar_t, abar_prev, jnp.asarray(x0), jnp.asarray(eps),
                                jnp.asarray(z), eta=eta)
    ref = [_reference_ddim(*v, eta) for v in zip(x_t, [abar_t] * 16, [abar_prev] * 16, x0, eps, z)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_ddpm_update_matches_paper():
  rng = np.random.default_rng(2)
  x_t, x0, eps, z = rng.normal(size=(4, 16))
  for abar_t, abar_prev in [(0.1, 0.11), (0.5, 0.9), (0.95, 1.0)]:
    ours = samplers.ddpm_update(jnp.asarray(x_t), abar_t, abar_prev, jnp.asarray(x0), jnp.asarray(eps),
                                jnp.asarray(z))
    ref = [_reference_ddpm(*v) for v in zip(x_t, [abar_t] * 16, [abar_prev] * 16, x0, z)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def _toy_denoiser(x, t):
  return jnp.tanh(x) * (1.0 + t[:, None, None, None] / 1000.0)


def _reference_sample(diffusion, x_T, noises, ts, update):
  """A plain Python loop over the published update, float64, given the same noises."""
  abar = diffusion.alphas_cumprod
  x = np.asarray(x_T, np.float64)
  for i, t in enumerate(ts):
    a_t, a_prev = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    out = np.tanh(x) * (1.0 + t / 1000.0)
    x0 = np.clip((x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t), -1, 1)
    eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    x = np.vectorize(update)(x, a_t, a_prev, x0, eps, noises[i])
  return x


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_full_sampler_matches_reference_loop(name):
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.linear_betas(1000)), "eps")
  key, shape, steps = jax.random.key(3), (2, 3, 3, 1), 6
  out = samplers.sample(_toy_denoiser, diffusion, key, shape, sampler=name, steps=steps, eta=1.0)
  k_init, k_loop = jax.random.split(key)
  x_T = jax.random.normal(k_init, shape)
  noises = [np.asarray(jax.random.normal(jax.random.fold_in(k_loop, i), shape)) for i in range(steps)]
  ts = samplers.timestep_sequence(1000, steps)
  if name == "ddim":
    update = lambda x, a, ap, x0, e, z: _reference_ddim(x, a, ap, x0, e, z, 1.0)
  else:
    update = lambda x, a, ap, x0, e, z: _reference_ddpm(x, a, ap, x0, z)
  np.testing.assert_allclose(out, _reference_sample(diffusion, x_T, noises, ts, update), atol=2e-4)


def test_ddim_eta0_is_deterministic_and_key_dependent():
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.cosine_betas(1000)), "v")
  run = jax.jit(lambda k: samplers.sample(_toy_denoiser, diffusion, k, (2, 4, 4, 1), sampler="ddim", steps=10))
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
  # eta = 0: the trajectory is a deterministic function of x_T alone, whatever key drives the (unused) noise.
  x_T = jax.random.normal(jax.random.key(5), (2, 4, 4, 1))
  s1 = samplers.sample(_toy_denoiser, diffusion, jax.random.key(0), x_T.shape, steps=10, x_T=x_T)
  s2 = samplers.sample(_toy_denoiser, diffusion, jax.random.key(9), x_T.shape, steps=10, x_T=x_T)
  np.testing.assert_array_equal(s1, s2)


def test_timestep_sequence_and_bad_steps():
  np.testing.assert_array_equal(samplers.timestep_sequence(1000, 5), [999, 749, 500, 250, 0])
  with pytest.raises(ValueError, match="config.sample.steps"):
    samplers.timestep_sequence(10, 11)
