"""The Gaussian family's denoisers by name (the other families build their one network directly). Each builder
takes (config, rngs) and returns an NNX module whose call gives `(output, per-position features)`."""

from collections.abc import Callable

import jax
from flax import nnx

from conprediff_jax.models.unet import unet_from_config

MODELS: dict[str, Callable[..., nnx.Module]] = {"unet": unet_from_config}


def build_denoiser(config, key: jax.Array) -> nnx.Module:
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"config.model.name must be one of {sorted(MODELS)}, got {name!r}")
  return MODELS[name](config, rngs=nnx.Rngs(key))
