"""The Gaussian family's denoisers by name (config.model.name; the other families build their one network directly).
Each takes (x, t, cond) and returns `(output, per-position features)`; its `feature_grid(config)` says where those
features lie: (the grid's side, their width), the UNet's at every pixel, the DiT's on its patch grid."""

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx

from conprediff_jax.models import dit, unet


@dataclasses.dataclass(frozen=True)
class Backbone:
  build: Callable[..., nnx.Module]                 # (config, *, rngs) -> the denoiser
  feature_grid: Callable[..., tuple[int, int]]     # config -> (grid side, feature width)


MODELS: dict[str, Backbone] = {"unet": Backbone(unet.unet_from_config, unet.feature_grid),
                               "dit": Backbone(dit.dit_from_config, dit.feature_grid)}


def build_denoiser(config, key: jax.Array) -> nnx.Module:
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"config.model.name must be one of {sorted(MODELS)}, got {name!r}")
  return MODELS[name].build(config, rngs=nnx.Rngs(key))
