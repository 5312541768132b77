"""Model families by name (`config.family`); see base.py for the interface the trainer relies on.

To add a family, subclass `Family` in its own module and name it here; the trainer, sampler, evaluator and
exporter need no change, and tests/test_families.py runs it through the conformance checks.
"""

from conprediff_jax.families.base import (BUFFERS, Family, FeatureSpec, FirstStage, LossOutput, abstract_model,
                                          restrict, union)
from conprediff_jax.families.autoencoder import AutoencoderFamily
from conprediff_jax.families.gaussian import GaussianFamily
from conprediff_jax.families.kl_autoencoder import KLAutoencoderFamily
from conprediff_jax.families.masked import MaskedFamily

FAMILIES: dict[str, type[Family]] = {"gaussian": GaussianFamily, "masked": MaskedFamily,
                                     "autoencoder": AutoencoderFamily, "kl_autoencoder": KLAutoencoderFamily}


def get(config, abstract_first_stage: bool = False) -> Family:
  """The config's family; `abstract_first_stage` for compiling only (Family.__init__)."""
  name = config.family
  if name not in FAMILIES:
    raise ValueError(f"config.family must be one of {sorted(FAMILIES)}, got {name!r}")
  return FAMILIES[name](config, abstract_first_stage)


__all__ = ["BUFFERS", "FAMILIES", "Family", "FeatureSpec", "FirstStage", "LossOutput", "abstract_model", "get",
           "restrict", "union"]
