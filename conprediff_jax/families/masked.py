"""The discrete family: a masked-token transformer over a frozen VQ tokenizer's grid (absorbing-state diffusion).

Training: tokenize the clean images with the frozen tokenizer, mask a random fraction of each example's tokens
(config.masking.schedule), and score the transformer's cross-entropy on the masked positions only. The context
head reads the transformer's final token features; its targets are the frozen codebook vectors of the clean tokens.
Sampling: MaskGIT's iterative parallel decoding from all-[MASK], then the tokenizer's decoder to pixels.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax import conditioning
from conprediff_jax.config_validation import FRACTION, NON_NEGATIVE, POSITIVE, ConfigError
from conprediff_jax.families import checks
from conprediff_jax.families import first_stage as first_stage_lib
from conprediff_jax.families import masked_process
from conprediff_jax.families.autoencoder import AutoencoderFamily
from conprediff_jax.families.base import Family, FeatureSpec, FirstStage, LossOutput, inference_model
from conprediff_jax.models.transformer import transformer_from_config


class MaskedFamily(Family):
  """Reads `config.first_stage.workdir`: a trained tokenizer (configs/digits_vq.py) and its config.json."""

  SCHEMA = "digits_tokens.py"
  CHOICES = {"model.name": ("transformer",), "sample.sampler": ("maskgit",),
             "masking.schedule": tuple(masked_process.MASK_SCHEDULES),
             "sample.schedule": tuple(masked_process.MASK_SCHEDULES)}
  BOUNDS = {**dict.fromkeys(("model.width", "model.depth", "model.num_heads", "model.mlp_ratio"), POSITIVE),
            "model.dropout": FRACTION, "sample.temperature": NON_NEGATIVE, "sample.choice_temperature": NON_NEGATIVE}

  @classmethod
  def check_config(cls, config, files: bool) -> None:
    workdir = config.first_stage.workdir
    tokenizer = first_stage_lib.check(
        config, family="autoencoder", kind="tokenizer", files=files, diffusers="VQModel",
        make=f"train the tokenizer first: python -m conprediff_jax.main --config=configs/digits_vq.py "
        f"--workdir={workdir or 'workdirs/digits_vq'}")
    m, grid = config.model, first_stage_lib.token_grid(tokenizer)
    if m.width % m.num_heads:
      raise ConfigError("model.num_heads", f"{m.num_heads} does not divide config.model.width={m.width}",
                        "use a divisor of the width")
    if config.sample.steps > grid**2:
      raise ConfigError("sample.steps", f"{config.sample.steps} decoding steps for {grid**2} tokens",
                        f"use at most {grid**2} (every step decodes at least one token)")
    checks.check_context_grid(config, grid, "the tokenizer's token grid")

  def __init__(self, config, abstract_first_stage: bool = False):
    super().__init__(config, abstract_first_stage)
    try:
      saved = first_stage_lib.config_of(config, abstract_first_stage)
    except FileNotFoundError:
      raise FileNotFoundError(f"config.first_stage.workdir={config.first_stage.workdir!r} holds no trained "
                              "tokenizer; train one with --config=configs/digits_vq.py") from None
    self.tokenizer = AutoencoderFamily(saved)
    self.grid = first_stage_lib.token_grid(saved)

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    return transformer_from_config(self.config, vocab_size=self.tokenizer.config.model.codebook_size,
                                   grid=self.grid, rngs=rngs)

  def first_stage(self) -> FirstStage:
    if self.abstract_first_stage:
      return first_stage_lib.abstract(self.tokenizer.config, AutoencoderFamily)
    workdir = self.config.first_stage.workdir
    return first_stage_lib.load(workdir, AutoencoderFamily,
                                f"train it first with --config=configs/digits_vq.py --workdir={workdir}")

  def loss(self, model, first_stage, batch, key) -> LossOutput:
    tokens = jax.lax.stop_gradient(first_stage.tokenize(batch["image"]))
    k_mask, k_drop = jax.random.split(key)
    inputs, mask = masked_process.mask_tokens(k_mask, tokens, model.mask_id, self.config.masking.schedule)
    rngs = nnx.Rngs(dropout=k_drop) if self.config.model.dropout > 0 else None
    cond = conditioning.from_batch(self.drop_condition(batch, key))
    logits, features = model(inputs, cond, rngs=rngs)
    loss, accuracy = masked_process.masked_cross_entropy(logits, tokens, mask)
    targets = first_stage.embed(tokens)  # the frozen codebook vectors of the clean tokens
    # The model's estimate of those vectors: the expected code under its prediction where masked, the known one
    # elsewhere.
    expected = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) @ first_stage.codebook[...]
    denoised = jnp.where(mask[..., None], expected, targets)
    signal = 1.0 - jnp.mean(mask.astype(jnp.float32), axis=(1, 2))
    return LossOutput(loss, {"loss_point": loss, "masked_accuracy": accuracy}, features, targets, denoised, signal)

  def feature_spec(self) -> FeatureSpec:
    return FeatureSpec(grid=self.grid, features=self.config.model.width,
                       targets=self.tokenizer.config.model.code_dim)

  def sampler(self, model_def, first_stage_def, num_images):
    s = self.config.sample

    def sample(weights, tokenizer_weights, key, cond):
      model = inference_model(model_def, weights)
      tokenizer = nnx.merge(first_stage_def, tokenizer_weights)
      logits = conditioning.classifier_free(lambda t, c: model(t, c)[0], cond, s.guidance_scale)
      return self._decode(logits, key, num_images, model.mask_id, tokenizer)

    return sample

  def _decode(self, logits_fn, key, num_images: int, mask_id: int, tokenizer, tokens=None):
    """MaskGIT decoding with the config's sampling settings (from `tokens` where some are known), then the
    tokenizer's decoder: images in [-1, 1]."""
    s = self.config.sample
    tokens = masked_process.maskgit_decode(
        logits_fn, key, batch=num_images, grid=self.grid, mask_id=mask_id, steps=s.steps,
        schedule=s.get("schedule", self.config.masking.schedule), temperature=s.temperature,
        choice_temperature=s.choice_temperature, tokens=tokens)
    return jnp.clip(tokenizer.decode_tokens(tokens), -1.0, 1.0)

  def inpainter(self, model_def, first_stage_def, num_images):
    """Known tokens fixed, the rest decoded by MaskGIT; then the known pixels pasted back over the decoder's output.
    A token is known where every pixel of its patch is (its encoding sees the unknown pixels as 0)."""

    def inpaint(weights, tokenizer_weights, key, images, known):
      model = inference_model(model_def, weights)
      tokenizer = nnx.merge(first_stage_def, tokenizer_weights)
      tokens = tokenizer.tokenize(jnp.where(known, images, 0.0))
      b, g = tokens.shape[0], self.grid
      patch = known.shape[1] // g
      token_known = jnp.all(known[..., 0].reshape(b, g, patch, g, patch), axis=(2, 4))
      filled = self._decode(lambda t: model(t)[0], key, num_images, model.mask_id, tokenizer,
                            tokens=jnp.where(token_known, tokens, model.mask_id))
      return jnp.where(known, images, filled)

    return inpaint
