"""The first-stage family: a VQ autoencoder (tokenizer) trained to reconstruct, read frozen by the masked family.

Its "samples" are reconstructions of held-out images (`config.eval.split`), so `--mode=sample` and `--mode=eval`
show and score what the later stage will see: FD-digits and class accuracy of the reconstructions, their mean
squared error, and how much of the codebook the held-out images use.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conprediff_jax import data as data_lib
from conprediff_jax.config_validation import FRACTION, NON_NEGATIVE, POSITIVE, ConfigError
from conprediff_jax.families import adversarial, checks
from conprediff_jax.families.base import Family, LossOutput
from conprediff_jax.models.vq import LAYOUTS, vq_from_config


class AutoencoderFamily(Family):
  """Reconstruction (`config.loss`: pixel, perceptual and adversarial terms, families/adversarial.py) + commitment;
  the codebook follows its encodings by EMA (buffers)."""

  SCHEMA = "digits_vq.py"
  CHOICES = {"model.name": ("vq",), "model.layout": LAYOUTS, **adversarial.CHOICES}
  BOUNDS = {**checks.CONV_BOUNDS, "model.codebook_size": POSITIVE, "model.code_dim": POSITIVE,
            "model.commitment_cost": NON_NEGATIVE, "model.codebook_decay": FRACTION,
            "model.dead_code_threshold": NON_NEGATIVE, **adversarial.BOUNDS}
  EXPORT_FORMAT = "diffusers_vqmodel"  # with config.model.layout="diffusers"

  @classmethod
  def check_config(cls, config, files: bool) -> None:
    checks.check_levels(config)
    if config.model.codebook_size < 2:
      raise ConfigError("model.codebook_size", f"{config.model.codebook_size} codes", "use at least 2 codes")
    checks.check_no_context(config)
    adversarial.check_config(config, files)

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    return vq_from_config(self.config, rngs=rngs)

  def first_stage(self):
    return self._perceptual

  @functools.cached_property
  def _perceptual(self):
    return adversarial.perceptual_network(self.config, self.abstract_first_stage)

  def auxiliary(self, rngs: nnx.Rngs) -> nnx.Module | None:
    return adversarial.discriminator(self.config, rngs)

  def auxiliary_optimizer(self):
    return adversarial.discriminator_optimizer(self.config)

  def loss(self, model, first_stage, batch, key, auxiliary=None, step=None) -> LossOutput:
    images = batch["image"]
    reconstruction, _, aux, head_input = model(images, train=True, key=key, head_input=True)
    total, metrics = adversarial.loss_terms(self.config, images, reconstruction, head_input, model.decoder.conv_out,
                                            first_stage, auxiliary, step)
    metrics.update({"loss_commitment": aux["loss_commitment"], "codebook_perplexity": aux["perplexity"],
                    "codebook_usage": aux["usage"]})
    return LossOutput(total + aux["loss_commitment"], metrics)

  def sampler(self, model_def, first_stage_def, num_images):
    del first_stage_def, num_images

    def reconstruct(weights, first_stage_weights, key, cond):
      del first_stage_weights, key
      return jnp.clip(nnx.merge(model_def, weights)(cond["image"])[0], -1.0, 1.0)

    return reconstruct

  @functools.cached_property
  def heldout(self) -> dict[str, np.ndarray]:
    data = self.config.data.copy_and_resolve_references()
    data.split = self.config.eval.split
    source = data_lib.make_source(data)
    return source.get_batch(np.arange(len(source)))

  def _heldout_rows(self, num_images: int, offset: int) -> np.ndarray:
    return (offset + np.arange(num_images)) % len(self.heldout["image"])

  def sample_cond_spec(self, num_images: int) -> dict:
    return {"image": data_lib.batch_spec(self.config, num_images)["image"]}

  def sample_request(self, num_images: int, offset: int = 0) -> dict:
    """A reconstruction should show its original's class."""
    return {"label": self.heldout["label"][self._heldout_rows(num_images, offset)]}

  def sample_cond(self, num_images: int, offset: int = 0) -> dict:
    """Held-out images in order (wrapping around)."""
    return {"image": self.heldout["image"][self._heldout_rows(num_images, offset)]}

  def score_batch(self, model: nnx.Module, samples: np.ndarray, offset: int) -> dict[str, np.ndarray]:
    """Squared reconstruction error of these held-out images, and the codes their encodings use."""
    originals = self.sample_cond(len(samples), offset)["image"]
    tokens = np.asarray(_tokenize(*nnx.split(model), originals)).ravel()
    return {"squared_error": np.sum(np.square(samples - originals), dtype=np.float64), "values": samples.size,
            "code_counts": np.bincount(tokens, minlength=model.codebook_size)}

  def score(self, totals: dict) -> dict[str, float]:
    """Reconstruction error of the held-out images, and their use of the codebook."""
    counts = totals["code_counts"] / totals["code_counts"].sum()
    used = counts[counts > 0]
    return {"reconstruction_mse": float(totals["squared_error"] / totals["values"]),
            "codebook_usage": float(len(used) / len(counts)),
            "codebook_perplexity": float(np.exp(-np.sum(used * np.log(used))))}


@functools.partial(jax.jit, static_argnums=0)
def _tokenize(graphdef, weights, images):
  return nnx.merge(graphdef, weights).tokenize(images)
