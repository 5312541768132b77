"""Latent diffusion: the Gaussian family's denoiser run on the latents of a frozen KL autoencoder
(config.first_stage.workdir: trained with configs/digits_kl.py, or a diffusers AutoencoderKL folder), as in LDM.

Training encodes each batch (a posterior sample) and multiplies by the scaling factor; sampling draws latents and
decodes them divided by it. The factor is config.first_stage.scaling_factor, or, at 0, a diffusers autoencoder's
own, or 1 / the standard deviation of our autoencoder's latents over its training data, measured once when the
first stage is loaded. The denoiser
(and a context head reading it) works on the latent grid: the config's data.image_size and data.channels stay
the pixels', `denoiser_config` holds the latent ones.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from conprediff_jax.families import first_stage as first_stage_lib
from conprediff_jax.families.base import FirstStage
from conprediff_jax.families.kl_autoencoder import KLAutoencoderFamily

ENCODE_STREAM = 1 << 22  # the posterior samples' key, folded from the loss's key


class LatentSpace:
  """`abstract`: the autoencoder as shapes (first_stage.abstract), with a scaling factor of 1 unless one is set."""

  def __init__(self, config, abstract: bool = False):
    self.workdir = config.first_stage.workdir
    self.abstract = abstract
    self.autoencoder_config = first_stage_lib.config_of(config, abstract)
    m = self.autoencoder_config.model
    self.size = self.autoencoder_config.data.image_size // 2 ** (len(m.channel_mults) - 1)
    self.channels = m.latent_channels
    self._scaling_factor = config.first_stage.scaling_factor

  def denoiser_config(self, config) -> ml_collections.ConfigDict:
    """`config` with the data shape the denoiser sees: the latent grid and its channels."""
    out = config.copy_and_resolve_references()
    out.data.image_size, out.data.channels = self.size, self.channels
    return out

  @functools.cached_property
  def stage(self) -> FirstStage:
    if self.abstract:
      return first_stage_lib.abstract(self.autoencoder_config, KLAutoencoderFamily)
    return first_stage_lib.load(self.workdir, KLAutoencoderFamily, "train it first with "
                                f"--config=configs/digits_kl.py --workdir={self.workdir}")

  @functools.cached_property
  def scaling_factor(self) -> float:
    """config.first_stage.scaling_factor, else a diffusers autoencoder's own, else measured on the data."""
    if self._scaling_factor or "scaling_factor" in self.autoencoder_config:
      return float(self._scaling_factor or self.autoencoder_config.scaling_factor)
    if self.abstract:
      return 1.0  # a constant factor: the compiled program is the same for any
    factor = KLAutoencoderFamily(self.autoencoder_config).scaling_factor(self.stage.weights)
    logging.info("latent scaling factor %.5f: 1 / the std of the autoencoder's latents on its training data",
                 factor)
    return factor

  def encode(self, autoencoder: nnx.Module, images: jax.Array, key: jax.Array) -> jax.Array:
    """Scaled latents of `images`: a sample of each posterior."""
    mean, logvar = autoencoder.encode(images)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.fold_in(key, ENCODE_STREAM), mean.shape)
    return jax.lax.stop_gradient(z * self.scaling_factor)

  def mask_cond(self, autoencoder: nnx.Module, images: jax.Array, known: jax.Array) -> dict:
    """LDM's inpainting condition, what a mask-conditioned latent denoiser reads beside its noisy latents: the scaled
    latents (posterior means) of `images` [B, H, W, C] with the unknown pixels set to 0, and `known` [B, H, W, 1]
    at the latent grid, where a latent position is known when every pixel it covers is."""
    mean, _ = autoencoder.encode(jnp.where(known, images, 0.0))
    b, h, w, _ = known.shape
    f = h // mean.shape[1]
    latent_known = jnp.all(known.reshape(b, h // f, f, w // f, f, 1), axis=(2, 4))
    return {"known_image": jax.lax.stop_gradient(mean * self.scaling_factor), "known_mask": latent_known}

  def decode(self, autoencoder: nnx.Module, latents: jax.Array) -> jax.Array:
    """Images in [-1, 1] from scaled latents."""
    return jnp.clip(autoencoder.decode(latents / self.scaling_factor), -1.0, 1.0)
