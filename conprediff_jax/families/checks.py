"""Config rules that several families share: a convolutional network's levels, the context loss's reach on the
family's feature grid, and a family that has no context loss. Each family's `check_config` calls what applies."""

import math

from conprediff_jax.config_validation import FRACTION, POSITIVE, ConfigError

# A convolutional network's settings (the UNet, the VQ and KL autoencoders).
CONV_BOUNDS = {**dict.fromkeys(("model.channels", "model.num_res_blocks", "model.num_groups"), POSITIVE),
               "model.dropout": FRACTION}


def check_levels(config) -> None:
  """A convolutional network that halves the grid at every level after the first, GroupNorm over its widths."""
  m, size = config.model, config.data.image_size
  mults = tuple(m.channel_mults)
  if not mults or min(mults) < 1:
    raise ConfigError("model.channel_mults", f"{mults} is not a non-empty tuple of positive ints",
                      "give one multiplier per level, e.g. (1, 2, 2)")
  factor = 2 ** (len(mults) - 1)
  if size % factor:
    raise ConfigError("data.image_size", f"{size} is not divisible by {factor}, the downsampling over "
                      f"{len(mults)} levels (config.model.channel_mults)",
                      f"use a multiple of {factor}, or fewer levels")
  widths = [m.channels * k for k in mults]
  if math.gcd(*widths) % m.num_groups:
    raise ConfigError("model.num_groups", f"{m.num_groups} does not divide the channel widths {widths} "
                      "(config.model.channels x channel_mults)", f"use a divisor of {math.gcd(*widths)}")


def check_context_grid(config, size: int, what: str) -> None:
  """The context strides on the family's `size` x `size` feature grid (`what` it is, for the message)."""
  if config.context.weight == 0:
    return
  strides = tuple(config.context.strides)
  if not strides:
    raise ConfigError("context.strides", "is empty", "give at least one stride, e.g. (1, 2, 3), or set "
                      "config.context.weight=0 to turn the context loss off")
  if min(strides) < 1:
    raise ConfigError("context.strides", f"{strides} holds non-positive strides", "use strides >= 1")
  if max(strides) >= size:
    raise ConfigError("context.strides", f"{strides} reaches outside the {size}x{size} grid ({what}): every "
                      "neighbour at that stride would be masked", f"use strides below {size}")


def check_no_context(config) -> None:
  if config.context.weight != 0:
    raise ConfigError("context.weight", f"{config.context.weight} with config.family={config.family!r}, which has "
                      "no context loss (it is defined for the denoising families)", "set config.context.weight=0")

