"""Flow matching as the Gaussian family's second process (diffusion/gaussian.py, process "flow"): its inputs, target
and clean estimates against the rectified-flow formulas written out, DDIM as the flow ODE's Euler step, logit-normal
timesteps against scipy, and the family training, sampling and refusing what is not built in one line."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conprediff_jax import config_validation, families, train
from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import GaussianDiffusion, flow_alphas_cumprod
from tests.conftest import tiny_config

T = 1000
FLOW = GaussianDiffusion(flow_alphas_cumprod(T), "flow")


def _level(t):
  return (np.asarray(t, np.float64) + 1) / (T + 1)


def test_the_network_reads_the_straight_line_from_data_to_noise_and_regresses_its_velocity():
  rng = np.random.default_rng(0)
  x0, eps = rng.normal(size=(2, 4, 4, 1)), rng.normal(size=(2, 4, 4, 1))
  for t in (jnp.array([0, 999]), jnp.array([3.25, 640.5])):  # integers, and logit-normal's fractional indices
    s = _level(t)[:, None, None, None]
    x_t = FLOW.q_sample(jnp.asarray(x0, jnp.float32), t, jnp.asarray(eps, jnp.float32))
    np.testing.assert_allclose(FLOW.model_input(x_t, t), (1 - s) * x0 + s * eps, rtol=1e-4, atol=5e-5)  # float32
    velocity = eps - x0
    np.testing.assert_allclose(FLOW.target(x0, t, eps), velocity)
    x0_hat, eps_hat = FLOW.to_x0_eps(x_t, FLOW._abar(t), jnp.asarray(velocity, jnp.float32))  # pylint: disable=protected-access
    np.testing.assert_allclose(x0_hat, x0, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(eps_hat, eps, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(FLOW._abar(jnp.arange(T))[:, 0, 0, 0], flow_alphas_cumprod(T), rtol=1e-4)  # pylint: disable=protected-access


def test_ddim_at_eta_0_is_the_euler_step_of_the_flow_ode():
  rng = np.random.default_rng(1)
  x_flow, v = rng.normal(size=(3, 4, 4, 1)), rng.normal(size=(3, 4, 4, 1))
  t, t_next = 700, 350
  s, s_next = _level(t), _level(t_next)
  a, a_next = flow_alphas_cumprod(T)[t], flow_alphas_cumprod(T)[t_next]
  x_vp = x_flow * (np.sqrt(a) + np.sqrt(1 - a))  # the same state in variance-preserving coordinates
  x0, eps = FLOW.to_x0_eps(jnp.asarray(x_vp, jnp.float32), a, jnp.asarray(v, jnp.float32))
  vp_next = samplers.ddim_update(x_vp, a, a_next, x0, eps, jnp.zeros_like(x0), eta=0.0)
  euler = x_flow + (s_next - s) * v
  np.testing.assert_allclose(FLOW.model_input(vp_next, jnp.full((3,), t_next)), euler, rtol=1e-4, atol=1e-4)


def test_logit_normal_timesteps_are_sigmoids_of_a_standard_normal():
  logit_normal = GaussianDiffusion(flow_alphas_cumprod(T), "flow", timestep_sampling="logit_normal")
  t = np.asarray(logit_normal.sample_t(jax.random.key(0), 20_000), np.float64)
  inside = (t > 0) & (t < T - 1)  # the clip at the ends holds s outside (1/(T+1), T/(T+1)): ~0.6% of draws
  assert inside.mean() > 0.99
  s = _level(t[inside])
  assert scipy.stats.kstest(np.log(s / (1 - s)), scipy.stats.truncnorm(
      np.log(1 / T), np.log(T), loc=0, scale=1).cdf).pvalue > 0.01


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it (CI runs it second)
@pytest.mark.parametrize("backbone", ["gaussian", "gaussian_dit"])
def test_the_flow_family_trains_samples_and_says_what_is_not_built(tmp_path, backbone):
  from configs import digits_flow  # pylint: disable=g-import-not-at-top
  config = tiny_config(backbone)
  config.diffusion.update({k: v for k, v in digits_flow.get_config().diffusion.items() if k in ("process",
                                                                                               "timestep_sampling")})
  config.sample.update(sampler="ddim", spacing="uniform", steps=4)
  families.validate(config, num_devices=1)
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)}
  state, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1), None)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0
  out = np.asarray(exp.family.sampler(exp.model_def, None, 4)(state["ema"], None, jax.random.key(2), None))
  assert out.shape == (4, 8, 8, 1) and np.all(np.isfinite(out)) and out.std() > 0
  for key, value, says in (("sample.spacing", "karras", "'karras' with config.diffusion.process='flow'"),
                           ("diffusion.process", "ddpm", "logit-normal timesteps are the flow process's")):
    bad = config.copy_and_resolve_references()
    bad[key.split(".")[0]][key.split(".")[1]] = value
    with pytest.raises(config_validation.ConfigError, match=says):
      families.validate(bad, num_devices=1)
  from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="flow-matching model .* has no diffusers scheduler export"):
    diffusers_export.scheduler_config(config)
