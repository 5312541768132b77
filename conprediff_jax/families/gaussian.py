"""The continuous family: a denoiser (the UNet) trained by Gaussian diffusion, sampled by DDPM/DDIM."""

from flax import nnx

from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import GaussianDiffusion
from conprediff_jax.families.base import Family, FeatureSpec, LossOutput
from conprediff_jax.models import MODELS


class GaussianFamily(Family):
  """eps/v-prediction on pixels; the context head reads the UNet's last up block and predicts clean pixels."""

  def __init__(self, config):
    super().__init__(config)
    self.diffusion = GaussianDiffusion.from_config(config)

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    return MODELS[self.config.model.name](self.config, rngs=rngs)

  def loss(self, model, first_stage, batch, key) -> LossOutput:
    del first_stage
    point, features, x0 = self.diffusion.loss(model, batch, key, dropout=self.config.model.dropout > 0)
    return LossOutput(point, {"loss_point": point}, features, x0)

  def feature_spec(self) -> FeatureSpec:
    m, d = self.config.model, self.config.data
    return FeatureSpec(grid=d.image_size, features=m.channels * m.channel_mults[0], targets=d.channels)

  def sampler(self, model_def, first_stage_def, num_images):
    del first_stage_def
    s, d = self.config.sample, self.config.data
    shape = (num_images, d.image_size, d.image_size, d.channels)

    def sample(weights, first_stage_weights, key, cond):
      del first_stage_weights
      denoiser = nnx.merge(model_def, weights)
      labels = None if cond is None else cond.get("label")
      apply = lambda x, t: denoiser(x, t, labels)[0]
      return samplers.sample(apply, self.diffusion, key, shape, sampler=s.sampler, steps=s.steps, eta=s.eta)

    return sample

  def export(self, weights, out_dir: str) -> str:
    from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top  # torch-free, lazy
    return diffusers_export.export_pipeline(self.config, weights, out_dir)
