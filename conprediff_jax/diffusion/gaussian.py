"""Gaussian (continuous) diffusion: noise schedules, forward process, eps/v targets and the denoising loss.

Schedules are built in float64 NumPy once (as the DDPM and improved-DDPM papers define them) and stored as
float32 device arrays; everything else is a pure function of them.
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


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}
PREDICTIONS = ("eps", "v")  # what the network predicts: the noise, or v = sqrt(abar) eps - sqrt(1 - abar) x0


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
  prediction: str = "eps"
  min_snr_gamma: float = 0.0  # > 0: Min-SNR-gamma loss weights (Hang et al. 2023); 0: the plain loss

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"config.diffusion.prediction must be 'eps' or 'v', got {self.prediction!r}")
    if self.min_snr_gamma < 0:
      raise ValueError(f"config.diffusion.min_snr_gamma must be >= 0, got {self.min_snr_gamma}")

  @classmethod
  def from_config(cls, config) -> "GaussianDiffusion":
    name = config.diffusion.schedule
    if name not in SCHEDULES:
      raise ValueError(f"config.diffusion.schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    betas = SCHEDULES[name](config.diffusion.timesteps)
    return cls(np.cumprod(1.0 - betas), config.diffusion.prediction, config.diffusion.min_snr_gamma)

  @property
  def timesteps(self) -> int:
    return len(self.alphas_cumprod)

  def _abar(self, t):
    return jnp.asarray(self.alphas_cumprod, jnp.float32)[t][:, None, None, None]

  def q_sample(self, x0, t, noise):
    abar = self._abar(t)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise

  def target(self, x0, t, noise):
    """What the network regresses: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
    if self.prediction == "eps":
      return noise
    abar = self._abar(t)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0

  def loss_weights(self) -> np.ndarray:
    """float64 [T]: the weight of each timestep's squared error.

    Min-SNR-gamma weights the x0-space error by min(SNR, gamma): in the network's target space that is
    min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v. It stops the many low-noise steps, whose
    errors are tiny and easy, from dominating the gradient.
    """
    if not self.min_snr_gamma:
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
    return a * x_t - s * model_out, s * x_t + a * model_out

  def loss(self, model, batch, key, *, dropout: bool = False, t=None) -> DenoisingLoss:
    """Mean squared error to the target at a uniform random t, or at the given `t` [B] (weighted by
    `loss_weights`; 1 by default), with the features and x0 estimate of the same forward pass for a context head.
    """
    from flax import nnx  # pylint: disable=g-import-not-at-top

    x0 = batch["image"]
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    if t is None:
      t = jax.random.randint(k_t, x0.shape[:1], 0, self.timesteps)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    x_t = self.q_sample(x0, t, noise)
    out, features = model(x_t, t, conditioning.from_batch(batch), rngs=nnx.Rngs(dropout=k_drop) if dropout else None)
    weights = jnp.asarray(self.loss_weights(), jnp.float32)[t][:, None, None, None]
    loss = jnp.mean(weights * jnp.square(out - self.target(x0, t, noise)))
    denoised, _ = self.to_x0_eps(x_t, self._abar(t), out)
    return DenoisingLoss(loss, features, x0, denoised, self._abar(t)[:, 0, 0, 0])
