"""The continuous family: a denoiser (the UNet) trained by Gaussian diffusion, sampled by DDPM/DDIM and the
faster solvers (with classifier-free guidance when conditional); inpainting by RePaint, or by a mask-conditioned
UNet. In pixel space, or on a frozen KL autoencoder's latents with config.first_stage.workdir (latent.py)."""

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax import conditioning
from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import GaussianDiffusion
from conprediff_jax.families.base import Family, FeatureSpec, FirstStage, LossOutput, inference_model
from conprediff_jax.families.latent import LatentSpace
from conprediff_jax.inpainting import mask_conditioning, repaint
from conprediff_jax.models import MODELS

MASK_STREAM = 1 << 21  # the training masks' key, folded from the loss's key (see Family.drop_condition)


class GaussianFamily(Family):
  """eps/v-prediction on pixels; the context head reads the UNet's last up block and predicts clean pixels."""

  def __init__(self, config, abstract_first_stage: bool = False):
    super().__init__(config, abstract_first_stage)
    self.diffusion = GaussianDiffusion.from_config(config)
    workdir = config.first_stage.workdir if "first_stage" in config else ""
    self.latent = LatentSpace(config, abstract_first_stage) if workdir else None
    if self.latent is not None and self.mask_conditional:
      raise ValueError("config.model.mask_conditional: a mask-conditioned UNet reads pixels; in latent space "
                       "(config.first_stage.workdir) it is not built")
    # What the denoiser sees: the config itself, or its latent grid.
    self.denoiser_config = config if self.latent is None else self.latent.denoiser_config(config)

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    return MODELS[self.config.model.name](self.denoiser_config, rngs=rngs)

  def first_stage(self) -> FirstStage | None:
    if self.latent is None:
      return None
    self.latent.scaling_factor  # pylint: disable=pointless-statement  # measured now, not inside a trace
    return self.latent.stage

  def loss(self, model, first_stage, batch, key) -> LossOutput:
    if self.latent is not None:
      batch = {**batch, "image": self.latent.encode(first_stage, batch["image"], key)}
    batch = self.drop_condition(batch, key)
    if self.mask_conditional:  # the known pixels of a random training mask join the condition
      x0 = batch["image"]
      known = mask_conditioning.random_known(jax.random.fold_in(key, MASK_STREAM), x0.shape[0], x0.shape[1],
                                             self.config.train.cond_dropout)
      batch = {**batch, **mask_conditioning.cond(x0, known)}
    out = self.diffusion.loss(model, batch, key, dropout=self.config.model.dropout > 0)
    return LossOutput(out.loss, {"loss_point": out.loss}, out.features, out.clean, out.denoised, out.signal)

  @property
  def mask_conditional(self) -> bool:
    return bool(self.config.model.get("mask_conditional", False))

  def _apply(self, denoiser, cond, guidance_scale: float = 1.0):
    """`apply(x_t, t)` for the samplers: the denoiser's output given `cond`, guided at `guidance_scale`."""
    return conditioning.classifier_free(lambda x, t, c: denoiser(x, t, c)[0], cond, guidance_scale)

  def _sample(self, apply, key, shape):
    """The config's sampler (sample.sampler, steps, eta) from pure noise."""
    s = self.config.sample
    # Latents are not bounded like pixels: their clean estimates are not clipped to [-1, 1].
    return samplers.sample(apply, self.diffusion, key, shape, sampler=s.sampler, steps=s.steps, eta=s.eta,
                           spacing=s.spacing, sigma_max=s.sigma_max, clip_x0=self.latent is None)

  def feature_spec(self) -> FeatureSpec:
    m, d = self.config.model, self.denoiser_config.data
    return FeatureSpec(grid=d.image_size, features=m.channels * m.channel_mults[0], targets=d.channels)

  def sampler(self, model_def, first_stage_def, num_images):
    d = self.denoiser_config.data
    shape = (num_images, d.image_size, d.image_size, d.channels)

    def sample(weights, first_stage_weights, key, cond):
      apply = self._apply(inference_model(model_def, weights), cond, self.config.sample.guidance_scale)
      out = self._sample(apply, key, shape)
      if self.latent is None:
        return out
      return self.latent.decode(nnx.merge(first_stage_def, first_stage_weights), out)

    return sample

  def inpainter(self, model_def, first_stage_def, num_images):
    del first_stage_def, num_images
    if self.latent is not None:
      raise ValueError("--mode=inpaint: inpainting in latent space (config.first_stage.workdir) is not built; "
                       "inpaint with a pixel-space model")
    p = self.config.inpaint

    def inpaint(weights, first_stage_weights, key, images, known):
      del first_stage_weights
      denoiser = inference_model(model_def, weights)
      if self.mask_conditional:  # the UNet reads the known pixels; they are pasted back over its output
        apply = self._apply(denoiser, mask_conditioning.cond(images, known))
        return jnp.where(known, images, self._sample(apply, key, images.shape))
      return repaint.inpaint(self._apply(denoiser, None), self.diffusion, key, images, known, steps=p.steps,
                             jump_length=p.jump_length, resamples=p.resamples)

    return inpaint

  def import_weights(self, path: str) -> dict:
    if self.mask_conditional or self.config.model.text_conditional:
      raise ValueError("config.model.init_from: a diffusers UNet2DModel imports as an unconditional or "
                       "class-conditional UNet; this config's UNet also reads a mask or a prompt")
    from conprediff_jax.export import diffusers_import  # pylint: disable=g-import-not-at-top  # torch-free
    return diffusers_import.load_unet_params(path, self.denoiser_config)

  def export(self, weights, out_dir: str) -> str:
    if self.mask_conditional:
      raise ValueError("--mode=export: a mask-conditioned UNet (config.model.mask_conditional) reads extra input "
                       "channels that a diffusers DDIMPipeline does not pass; export an unconditional one")
    from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top  # torch-free, lazy
    autoencoder = None if self.latent is None else (self.latent.autoencoder_config, self.latent.stage.weights,
                                                    self.latent.scaling_factor)
    if self.config.model.text_conditional:
      return diffusers_export.export_text_to_image(self.denoiser_config, weights, out_dir, autoencoder)
    if autoencoder is None:
      return diffusers_export.export_pipeline(self.config, weights, out_dir)
    return diffusers_export.export_latent_pipeline(self.denoiser_config, weights, *autoencoder, out_dir)

