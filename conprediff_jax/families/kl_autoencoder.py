"""The latent-diffusion first stage: a KL autoencoder (diffusers' AutoencoderKL layout) trained to reconstruct,
read frozen by a latent Gaussian model (config.first_stage.workdir of configs/digits_latent.py).

Loss: the reconstruction decoded from a posterior sample scored by `config.loss` (pixel, perceptual and adversarial
terms, families/adversarial.py), plus `model.kl_weight` times the KL to N(0, I) per pixel (LDM's sum-over-pixels
objective divided by the pixel count).
Samples and evaluation are reconstructions of held-out images, as for the VQ tokenizer; --mode=eval also reports
the latents' standard deviation, whose inverse is the scaling factor a latent diffusion model applies.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from conprediff_jax.config_validation import NON_NEGATIVE, POSITIVE
from conprediff_jax.families import adversarial, checks
from conprediff_jax.families.autoencoder import AutoencoderFamily
from conprediff_jax.families.base import LossOutput, abstract_model
from conprediff_jax.models.kl import kl_from_config


class KLAutoencoderFamily(AutoencoderFamily):

  SCHEMA = "digits_kl.py"
  CHOICES = {"model.name": ("kl",), **adversarial.CHOICES}
  BOUNDS = {**checks.CONV_BOUNDS, "model.latent_channels": POSITIVE, "model.kl_weight": NON_NEGATIVE,
            **adversarial.BOUNDS}
  EXPORT_FORMAT = "diffusers_autoencoder_kl"

  @classmethod
  def check_config(cls, config, files: bool) -> None:
    checks.check_levels(config)
    checks.check_no_context(config)
    adversarial.check_config(config, files)

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    return kl_from_config(self.config, rngs=rngs)

  def loss(self, model, first_stage, batch, key, auxiliary=None, step=None) -> LossOutput:
    images = batch["image"]
    reconstruction, kl, head_input = model(images, key, head_input=True)
    total, metrics = adversarial.loss_terms(self.config, images, reconstruction, head_input, model.decoder.conv_out,
                                            first_stage, auxiliary, step)
    kl_per_pixel = jnp.mean(kl) / np.prod(images.shape[1:])
    return LossOutput(total + self.config.model.kl_weight * kl_per_pixel, {**metrics, "kl_per_pixel": kl_per_pixel})

  def score_batch(self, model: nnx.Module, samples: np.ndarray, offset: int) -> dict[str, np.ndarray]:
    originals = self.sample_cond(len(samples), offset)["image"]
    mean = np.asarray(_encode_mean(model, jnp.asarray(originals)), np.float64)
    return {"squared_error": np.sum(np.square(samples - originals), dtype=np.float64), "values": samples.size,
            "latent_sum": mean.sum(), "latent_sq_sum": np.square(mean).sum(), "latent_values": mean.size}

  def score(self, totals: dict) -> dict[str, float]:
    mean = totals["latent_sum"] / totals["latent_values"]
    std = np.sqrt(totals["latent_sq_sum"] / totals["latent_values"] - mean**2)
    return {"reconstruction_mse": float(totals["squared_error"] / totals["values"]), "latent_std": float(std)}

  def scaling_factor(self, weights, num_images: int = 1024) -> float:
    """1 / the standard deviation of the posterior means of (up to) `num_images` training images: latents times
    this have about unit variance, what a diffusion model's noise schedule assumes (LDM's rescaling)."""
    from conprediff_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    source = data_lib.make_source(self.config.data)
    images = source.get_batch(np.arange(min(num_images, len(source))))["image"]
    model = nnx.merge(abstract_model(self)[0], weights)
    return float(1.0 / np.std(np.asarray(_encode_mean(model, jnp.asarray(images)))))


@nnx.jit
def _encode_mean(model, images):
  return model.encode(images)[0]
