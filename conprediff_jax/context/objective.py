"""The context term of the training objective, as the config sets it: what the head reads, what it predicts, how
each example's term is weighted by how noisy its input was, and how lambda ramps up.

    term = lambda(step) * context_loss(head, inputs, targets, key, example_weights=w(signal))

It reads a family's loss output by field (features, targets, denoised, signal; families/base.py LossOutput), so it
applies to every family that fills them and imports none.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax.context.decoder import ContextDecoder
from conprediff_jax.context.loss import context_loss

HEAD_INPUTS = ("features", "features+denoised")
TARGETS = ("clean", "denoised")
TIMESTEP_WEIGHTINGS = ("none", "alpha_bar", "snr", "cutoff")


def head_width(config, spec) -> int:
  """The head's input width: the family's features, plus its denoised estimate's channels when it reads those."""
  return spec.features + (spec.targets if config.context.head_input == "features+denoised" else 0)


def build_head(config, spec, key) -> ContextDecoder:
  c = config.context
  return ContextDecoder(head_width(config, spec), spec.targets, num_strides=len(c.strides),
                        num_samples=c.num_samples, latent_dim=c.latent_dim or None, hidden_dim=c.hidden_dim,
                        rngs=nnx.Rngs(key))


def example_weights(context_config, signal: jax.Array | None) -> jax.Array | None:
  """w [B] from each example's kept signal s (abar_t, or the unmasked fraction): None (every example 1), s itself
  ("alpha_bar"), min(SNR, gamma) / gamma with SNR = s / (1 - s) ("snr"), or 1 where s >= min_signal else 0
  ("cutoff"). All lie in [0, 1] and fall with the noise: they take the term away from the noisiest inputs, whose
  neighbourhood the features can barely predict."""
  kind = context_config.timestep_weighting
  if kind not in TIMESTEP_WEIGHTINGS:
    raise ValueError(f"config.context.timestep_weighting must be one of {TIMESTEP_WEIGHTINGS}, got {kind!r}")
  if kind == "none":
    return None
  if signal is None:
    raise ValueError(f"config.context.timestep_weighting={kind!r}: this family's loss reports no noise level")
  s = signal.astype(jnp.float32)
  if kind == "alpha_bar":
    return s
  if kind == "snr":
    gamma = context_config.snr_gamma
    return jnp.minimum(s / jnp.maximum(1.0 - s, 1e-12), gamma) / gamma
  return (s >= context_config.min_signal).astype(jnp.float32)


def weight_at(context_config, step) -> jax.Array:
  """lambda at `step`: ramped linearly from 0 over weight_warmup_steps, then constant."""
  c = context_config
  if not c.weight_warmup_steps:
    return jnp.asarray(c.weight, jnp.float32)
  return c.weight * jnp.minimum(1.0, step.astype(jnp.float32) / c.weight_warmup_steps)


def make_term(config) -> Callable:
  """`term(head, out, key, step) -> (lambda(step) * loss, loss)` for a family's loss output `out`."""
  c = config.context
  options = {"sorted": dict(num_projections=c.num_projections),
             "sinkhorn": dict(epsilon=c.epsilon, iterations=c.sinkhorn_iterations),
             "exact": {}}
  if c.solver not in options:
    raise ValueError(f"config.context.solver must be one of {sorted(options)}, got {c.solver!r}")
  loss = functools.partial(context_loss, strides=tuple(c.strides), solver=c.solver,
                           position_fraction=c.position_fraction, **options[c.solver])

  def term(head, out, key, step):
    needs_denoised = c.head_input == "features+denoised" or c.targets == "denoised"
    if needs_denoised and out.denoised is None:
      raise ValueError("config.context.head_input / targets ask for the model's denoised estimate, which this "
                       "family's loss does not report")
    inputs = out.features
    if c.head_input == "features+denoised":  # the paper's "based on the denoised point"; its gradient reaches the model
      inputs = jnp.concatenate([inputs.astype(jnp.float32), out.denoised.astype(jnp.float32)], axis=-1)
    targets = out.targets if c.targets == "clean" else out.denoised
    value = loss(head, inputs, jax.lax.stop_gradient(targets), key,
                 example_weights=example_weights(c, out.signal))
    return weight_at(c, step) * value, value

  return term
