"""The continuous family: a denoiser (a UNet or a DiT: models.MODELS, config.model.name) trained by Gaussian
diffusion or flow matching, sampled by DDPM/DDIM and the faster solvers (with classifier-free guidance when
conditional); inpainting by RePaint, or by a mask-conditioned denoiser. In pixel space, or on a frozen KL
autoencoder's latents with config.first_stage.workdir (latent.py)."""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from conprediff_jax import conditioning
from conprediff_jax.config_validation import NON_NEGATIVE, POSITIVE, ConfigError
from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import PREDICTIONS, PROCESSES, SCHEDULES, TIMESTEP_SAMPLING, GaussianDiffusion
from conprediff_jax.families import checks
from conprediff_jax.families import first_stage as first_stage_lib
from conprediff_jax.families.base import Family, FeatureSpec, FirstStage, LossOutput, inference_model
from conprediff_jax.families.latent import LatentSpace
from conprediff_jax.inpainting import mask_conditioning, repaint
from conprediff_jax.models import MODELS, layers

MASK_STREAM = 1 << 21  # the training masks' key, folded from the loss's key (see Family.drop_condition)


class GaussianFamily(Family):
  """eps/v/velocity prediction on pixels or latents; the context head reads the denoiser's last per-position
  features (the UNet's last up block, the DiT's last block on its patch grid) and predicts the clean signal there."""

  SCHEMA = "default.py"
  CHOICES = {"model.name": tuple(MODELS), "diffusion.schedule": tuple(SCHEDULES), "diffusion.prediction": PREDICTIONS,
             "diffusion.process": PROCESSES, "diffusion.timestep_sampling": TIMESTEP_SAMPLING,
             "sample.sampler": tuple(samplers.SAMPLERS), "sample.spacing": tuple(samplers.SPACINGS)}
  BOUNDS = {**checks.CONV_BOUNDS, "model.num_heads": POSITIVE, "model.patch_size": POSITIVE, "model.width": POSITIVE,
            "model.depth": POSITIVE, "model.mlp_ratio": POSITIVE, "diffusion.timesteps": POSITIVE,
            "diffusion.min_snr_gamma": NON_NEGATIVE, "sample.eta": NON_NEGATIVE, "sample.sigma_max": NON_NEGATIVE}

  @property
  def EXPORT_FORMAT(self) -> str:  # pylint: disable=invalid-name  # the backbone's: diffusers_unet | diffusers_dit
    return f"diffusers_{self.config.model.name}"

  IMPORT_FORMAT = EXPORT_FORMAT

  @classmethod
  def check_config(cls, config, files: bool) -> None:
    workdir = config.first_stage.workdir
    if workdir:  # latent diffusion reads a trained KL autoencoder of the same images
      first_stage_lib.check(config, family="kl_autoencoder", kind="KL autoencoder", files=files,
                            diffusers="AutoencoderKL",
                            make=f"train it first: python -m conprediff_jax.main --config=<its autoencoder config: "
                            f"configs/digits_kl.py for the digits, configs/paper_kl.py:<task> for the paper's tasks> "
                            f"--workdir={workdir}")
    view = denoiser_view(config)
    BACKBONE_CHECKS[config.model.name](view)
    checks.check_context_grid(config, MODELS[config.model.name].feature_grid(view)[0], "the denoiser's feature grid")
    d = config.diffusion
    if d.process != "flow" and d.timestep_sampling != "uniform":
      raise ConfigError("diffusion.timestep_sampling", f"{d.timestep_sampling!r} with config.diffusion.process="
                        f"{d.process!r}", "logit-normal timesteps are the flow process's; use 'uniform'")
    if d.process == "flow" and config.sample.spacing == "karras":
      raise ConfigError("sample.spacing", "'karras' with config.diffusion.process='flow' (its levels between "
                        "timesteps are not built)", "use 'uniform', 'linspace' or 'trailing'")
    timesteps = config.diffusion.timesteps
    for key, steps in (("sample.steps", config.sample.steps), ("inpaint.steps", config.inpaint.steps)):
      if steps > timesteps:
        raise ConfigError(key, f"{steps} exceeds config.diffusion.timesteps={timesteps}", f"use at most {timesteps}")
    path = config.model.init_from
    if files and path and not os.path.isdir(os.path.expanduser(path)):
      raise ConfigError("model.init_from", f"{path!r} is not an existing directory",
                        "point it at a diffusers UNet2DModel or DiTTransformer2DModel folder (safetensors), or "
                        "leave it empty")

  def __init__(self, config, abstract_first_stage: bool = False):
    super().__init__(config, abstract_first_stage)
    self.diffusion = GaussianDiffusion.from_config(config)
    workdir = config.first_stage.workdir if "first_stage" in config else ""
    self.latent = LatentSpace(config, abstract_first_stage) if workdir else None
    # What the denoiser sees: the config itself, or its latent grid.
    self.denoiser_config = config if self.latent is None else self.latent.denoiser_config(config)

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    return MODELS[self.config.model.name].build(self.denoiser_config, rngs=rngs)

  def first_stage(self) -> FirstStage | None:
    if self.latent is None:
      return None
    self.latent.scaling_factor  # pylint: disable=pointless-statement  # measured now, not inside a trace
    return self.latent.stage

  def loss(self, model, first_stage, batch, key) -> LossOutput:
    batch = self.drop_condition(batch, key)
    if self.mask_conditional:  # the known pixels of a random training mask join the condition
      x0 = batch["image"]
      known = mask_conditioning.random_known(jax.random.fold_in(key, MASK_STREAM), x0.shape[0], x0.shape[1],
                                             self.config.train.cond_dropout)
      batch = {**batch, **self._mask_cond(first_stage, x0, known)}
    if self.latent is not None:
      batch = {**batch, "image": self.latent.encode(first_stage, batch["image"], key)}
    out = self.diffusion.loss(model, batch, key, dropout=self.config.model.dropout > 0)
    # The context head's targets on the features' grid: a DiT's patch of pixels (or latents) per token.
    on_grid = lambda x: layers.space_to_depth(x, x.shape[1] // out.features.shape[1])
    return LossOutput(out.loss, {"loss_point": out.loss}, out.features, on_grid(out.clean), on_grid(out.denoised),
                      out.signal)

  @property
  def mask_conditional(self) -> bool:
    return bool(self.config.model.get("mask_conditional", False))

  def _mask_cond(self, first_stage, images, known) -> dict:
    """The condition of filling `images` where not `known`: the known pixels and the mask, or, in latent space,
    LDM's inpainting condition: the latents of the masked image and the mask at the latent grid (latent.py)."""
    if self.latent is None:
      return mask_conditioning.cond(images, known)
    return self.latent.mask_cond(first_stage, images, known)

  def _apply(self, denoiser, cond, guidance_scale: float = 1.0):
    """`apply(x_t, t)` for the samplers: the denoiser's output given `cond`, guided at `guidance_scale`."""
    model_input = self.diffusion.model_input
    return conditioning.classifier_free(lambda x, t, c: denoiser(model_input(x, t), t, c)[0], cond, guidance_scale)

  def _sample(self, apply, key, shape):
    """The config's sampler (sample.sampler, steps, eta) from pure noise."""
    s = self.config.sample
    # Latents are not bounded like pixels: their clean estimates are not clipped to [-1, 1].
    return samplers.sample(apply, self.diffusion, key, shape, sampler=s.sampler, steps=s.steps, eta=s.eta,
                           spacing=s.spacing, sigma_max=s.sigma_max, clip_x0=self.latent is None)

  def feature_spec(self) -> FeatureSpec:
    d = self.denoiser_config.data
    grid, width = MODELS[self.config.model.name].feature_grid(self.denoiser_config)
    return FeatureSpec(grid=grid, features=width, targets=d.channels * (d.image_size // grid) ** 2)

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
    del num_images
    if self.latent is not None and not self.mask_conditional:
      raise ValueError("--mode=inpaint: a latent model inpaints when it is mask-conditioned "
                       "(config.model.mask_conditional=True, configs/digits_latent_inpaint.py); RePaint runs in "
                       "pixel space only")
    p, d = self.config.inpaint, self.denoiser_config.data

    def inpaint(weights, first_stage_weights, key, images, known):
      denoiser = inference_model(model_def, weights)
      if self.mask_conditional:  # the denoiser reads what is known; the known pixels are pasted back over its output
        stage = None if self.latent is None else nnx.merge(first_stage_def, first_stage_weights)
        apply = self._apply(denoiser, self._mask_cond(stage, images, known))
        out = self._sample(apply, key, (images.shape[0], d.image_size, d.image_size, d.channels))
        return jnp.where(known, images, out if stage is None else self.latent.decode(stage, out))
      return repaint.inpaint(self._apply(denoiser, None), self.diffusion, key, images, known, steps=p.steps,
                             jump_length=p.jump_length, resamples=p.resamples)

    return inpaint


def denoiser_view(config) -> ml_collections.ConfigDict:
  """The data shape a Gaussian model's UNet sees: the config's own, or, with config.first_stage.workdir, the latent
  grid and channels of the autoencoder there (latent.py)."""
  saved = first_stage_lib.stage_config(config)
  if saved is None:
    return config
  view = config.copy_and_resolve_references()
  view.data.image_size = saved["data"]["image_size"] // 2 ** (len(saved["model"]["channel_mults"]) - 1)
  view.data.channels = saved["model"]["latent_channels"]
  return view


def _check_dit(config) -> None:
  """The shapes dit.py builds: patches that tile the grid, heads and 2-D positions that split the width."""
  m, size = config.model, config.data.image_size
  if size % m.patch_size:
    raise ConfigError("model.patch_size", f"{m.patch_size} does not divide the {size}x{size} grid the DiT reads",
                      f"use a divisor of {size} (2, 4 or 8 as in the DiT paper)")
  if m.width % m.num_heads:
    raise ConfigError("model.num_heads", f"{m.num_heads} does not divide the DiT width {m.width}",
                      "use a divisor of config.model.width")
  if m.width % 4:
    raise ConfigError("model.width", f"{m.width} is not a multiple of 4, which the 2-D sin-cos positions need "
                      "(sin and cos of rows and of columns)", "use a multiple of 4")


def _check_unet(config) -> None:
  """The shapes unet.py builds: every level halves the grid, GroupNorm and attention split the widths."""
  checks.check_levels(config)
  m, size = config.model, config.data.image_size
  mults = tuple(m.channel_mults)
  if m.channels % 2:
    raise ConfigError("model.channels", f"{m.channels} is odd, but the sinusoidal timestep embedding is "
                      "sin/cos pairs of this width", "use an even width")
  widths = [m.channels * k for k in mults]
  levels = [size // 2**i for i in range(len(mults))]
  unused = [r for r in m.attention_resolutions if r not in levels]
  if unused:
    raise ConfigError("model.attention_resolutions", f"{unused} match no UNet level (the levels are {levels}), "
                      "so no attention would be added there", f"use sizes from {levels}, or () for none")
  # The mid block always attends at the last width.
  attended = sorted({w for w, r in zip(widths, levels) if r in m.attention_resolutions} | {widths[-1]})
  if math.gcd(*attended) % m.num_heads:
    raise ConfigError("model.num_heads", f"{m.num_heads} does not divide the attention widths {attended}",
                      f"use a divisor of {math.gcd(*attended)}")


BACKBONE_CHECKS = {"unet": _check_unet, "dit": _check_dit}  # the rules of each backbone in MODELS
