"""Gaussian (continuous) diffusion: noise schedules, forward process, eps/v targets and the denoising loss; and flow
matching (rectified flow) as the same Gaussian process in other coordinates.

Schedules are built in float64 NumPy once (as the DDPM and improved-DDPM papers define them) and stored as
float32 device arrays; everything else is a pure function of them.

Flow matching (`diffusion.process = "flow"`; Lipman et al. 2023, Liu et al. 2023, as SD3 trains it): the network
reads x_s = (1 - s) x0 + s eps at s in (0, 1) and predicts the velocity eps - x0, its timestep s sampled
logit-normally (`diffusion.timestep_sampling`). That x_s is the variance-preserving x_t of
abar = (1 - s)^2 / ((1 - s)^2 + s^2) scaled by 1 / (sqrt(abar) + sqrt(1 - abar)), so it is kept here as one more
schedule and target: the samplers and RePaint, which work on the variance-preserving x_t, run it unchanged through
`model_input` (the scaling) and `to_x0_eps` (the velocity's x0 and eps). DDIM at eta 0 is then exactly the Euler
step of the flow's ODE in s (both move to (1 - s') x0 + s' eps). Timestep index i stands for s = (i + 1) / (T + 1),
so the noisiest level keeps abar ~ 1e-6 > 0 and every solver's formulas stay finite.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from conprediff_jax import conditioning


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Ho et al. 2020; the endpoints are for 1,000 steps and rescaled for other lengths."""
  scale = 1000.0 / timesteps
  return np.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas clipped at max_beta."""
  f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
  return np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(timesteps)], dtype=np.float64)


def flow_abar(t, timesteps: int):
  """abar of rectified flow at timestep index t (NumPy or JAX, fractional too): level s = (t + 1) / (T + 1)."""
  s = (t + 1) / (timesteps + 1)
  return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)


def flow_alphas_cumprod(timesteps: int) -> np.ndarray:
  """abar of rectified flow's levels at the integer timesteps, float64 [T]."""
  return flow_abar(np.arange(timesteps, dtype=np.float64), timesteps)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}
PREDICTIONS = ("eps", "v")  # what the network predicts: the noise, or v = sqrt(abar) eps - sqrt(1 - abar) x0
PROCESSES = ("ddpm", "flow")  # flow: rectified flow's levels, the network predicting the velocity eps - x0
TIMESTEP_SAMPLING = ("logit_normal", "uniform")  # logit_normal: s = sigmoid(N(0, 1)) (SD3), for the flow process


class DenoisingLoss(NamedTuple):
  """One forward pass of the denoising loss, with what a context head may read from it."""
  loss: jax.Array      # scalar
  features: jax.Array  # [B, H, W, F] the network's per-position features
  clean: jax.Array     # [B, H, W, C] x0
  denoised: jax.Array  # [B, H, W, C] the network's own estimate of x0
  signal: jax.Array    # [B] abar_t, the fraction of the signal's variance left in x_t


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
  """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t in [0, T); the network predicts eps or v."""

  alphas_cumprod: np.ndarray  # float64 [T]
  prediction: str = "eps"     # "eps" | "v" | "flow" (the flow process's velocity eps - x0)
  min_snr_gamma: float = 0.0  # > 0: Min-SNR-gamma loss weights (Hang et al. 2023); 0: the plain loss
  timestep_sampling: str = "uniform"

  def __post_init__(self):
    if self.prediction not in (*PREDICTIONS, "flow"):
      raise ValueError(f"config.diffusion.prediction must be 'eps' or 'v', got {self.prediction!r}")
    if self.min_snr_gamma < 0:
      raise ValueError(f"config.diffusion.min_snr_gamma must be >= 0, got {self.min_snr_gamma}")
    if self.timestep_sampling == "logit_normal" and not self.is_flow:
      raise ValueError("config.diffusion.timestep_sampling='logit_normal' is for config.diffusion.process='flow'")

  @classmethod
  def from_config(cls, config) -> "GaussianDiffusion":
    d = config.diffusion
    if d.get("process", "ddpm") == "flow":
      return cls(flow_alphas_cumprod(d.timesteps), "flow", 0.0, d.timestep_sampling)
    if d.schedule not in SCHEDULES:
      raise ValueError(f"config.diffusion.schedule must be one of {sorted(SCHEDULES)}, got {d.schedule!r}")
    betas = SCHEDULES[d.schedule](d.timesteps)
    return cls(np.cumprod(1.0 - betas), d.prediction, d.min_snr_gamma, d.get("timestep_sampling", "uniform"))

  @property
  def is_flow(self) -> bool:
    return self.prediction == "flow"

  @property
  def timesteps(self) -> int:
    return len(self.alphas_cumprod)

  def _abar(self, t):
    """abar at timestep indices t [B]: the schedule's table, or for the flow process its formula (t may be
    fractional there)."""
    if self.is_flow:
      return flow_abar(jnp.asarray(t, jnp.float32), self.timesteps)[:, None, None, None]
    return jnp.asarray(self.alphas_cumprod, jnp.float32)[t][:, None, None, None]

  def model_input(self, x_t, t):
    """What the network reads at the variance-preserving x_t of timestep t [B]: x_t itself, or for the flow
    process (1 - s) x0 + s eps = x_t / (sqrt(abar) + sqrt(1 - abar))."""
    if not self.is_flow:
      return x_t
    abar = self._abar(t)
    return x_t / (jnp.sqrt(abar) + jnp.sqrt(1.0 - abar))

  def sample_t(self, key, batch: int):
    """Training timesteps [B]: uniform integers, or for the flow process with logit-normal sampling the (fractional)
    index of s = sigmoid(n), n ~ N(0, 1)."""
    if self.timestep_sampling == "logit_normal":
      s = jax.nn.sigmoid(jax.random.normal(key, (batch,)))
      return jnp.clip(s * (self.timesteps + 1) - 1, 0.0, self.timesteps - 1)
    return jax.random.randint(key, (batch,), 0, self.timesteps)

  def q_sample(self, x0, t, noise):
    abar = self._abar(t)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise

  def target(self, x0, t, noise):
    """What the network regresses: eps, v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022), or the flow's
    velocity eps - x0."""
    if self.prediction == "eps":
      return noise
    if self.is_flow:
      return noise - x0
    abar = self._abar(t)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0

  def loss_weights(self) -> np.ndarray:
    """float64 [T]: the weight of each timestep's squared error.

    Min-SNR-gamma weights the x0-space error by min(SNR, gamma): in the network's target space that is
    min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v. It stops the many low-noise steps, whose
    errors are tiny and easy, from dominating the gradient.
    """
    if not self.min_snr_gamma or self.is_flow:
      return np.ones_like(self.alphas_cumprod)
    snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
    if self.prediction == "eps":
      return np.minimum(1.0, self.min_snr_gamma / snr)  # min(SNR, gamma) / SNR, finite at SNR = 0
    return np.minimum(snr, self.min_snr_gamma) / (snr + 1.0)

  def to_x0_eps(self, x_t, t_abar, model_out):
    """(x0, eps) implied by the network output at noise level abar (an array broadcastable to x_t)."""
    a, s = jnp.sqrt(t_abar), jnp.sqrt(1.0 - t_abar)
    if self.prediction == "eps":
      eps = model_out
      return (x_t - s * eps) / a, eps
    if self.is_flow:  # at the flow's x = x_t / (a + s), level s / (a + s): x0 = x - level v, eps = x + (1 - level) v
      x, level = x_t / (a + s), s / (a + s)
      return x - level * model_out, x + (1.0 - level) * model_out
    return a * x_t - s * model_out, s * x_t + a * model_out

  def loss(self, model, batch, key, *, dropout: bool = False, t=None) -> DenoisingLoss:
    """Mean squared error to the target at a uniform random t, or at the given `t` [B] (weighted by
    `loss_weights`; 1 by default), with the features and x0 estimate of the same forward pass for a context head.
    """
    from flax import nnx  # pylint: disable=g-import-not-at-top

    x0 = batch["image"]
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    if t is None:
      t = self.sample_t(k_t, x0.shape[0])
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    x_t = self.q_sample(x0, t, noise)
    out, features = model(self.model_input(x_t, t), t, conditioning.from_batch(batch),
                          rngs=nnx.Rngs(dropout=k_drop) if dropout else None)
    weights = 1.0 if self.is_flow else jnp.asarray(self.loss_weights(), jnp.float32)[t][:, None, None, None]
    loss = jnp.mean(weights * jnp.square(out - self.target(x0, t, noise)))
    denoised, _ = self.to_x0_eps(x_t, self._abar(t), out)
    return DenoisingLoss(loss, features, x0, denoised, self._abar(t)[:, 0, 0, 0])
