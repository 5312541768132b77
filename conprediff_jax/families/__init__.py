"""Model families by name (`config.family`); see base.py for the interface the trainer relies on.

To add a family, subclass `Family` in its own module (its reference config in configs/, its keys' rules in
`check_config`) and name it here; the trainer, sampler, evaluator, exporter and `validate` need no change, and
tests/test_families.py runs it through the conformance checks.
"""

from conprediff_jax import conditioning, config_validation, parallel
from conprediff_jax.config_validation import ConfigError
from conprediff_jax.data import registry as data_registry
from conprediff_jax.families.base import (BUFFERS, Family, FeatureSpec, FirstStage, LossOutput, abstract_model,
                                          restore_ema_weights, restrict, union)
from conprediff_jax.families.autoencoder import AutoencoderFamily
from conprediff_jax.families.gaussian import GaussianFamily
from conprediff_jax.families.kl_autoencoder import KLAutoencoderFamily
from conprediff_jax.families.masked import MaskedFamily

FAMILIES: dict[str, type[Family]] = {"gaussian": GaussianFamily, "masked": MaskedFamily,
                                     "autoencoder": AutoencoderFamily, "kl_autoencoder": KLAutoencoderFamily}


def get(config, abstract_first_stage: bool = False) -> Family:
  """The config's family; `abstract_first_stage` for compiling only (Family.__init__)."""
  return family_class(config)(config, abstract_first_stage)


def family_class(config) -> type[Family]:
  name = config.get("family", "gaussian")
  if name not in FAMILIES:
    raise ConfigError("family", f"{name!r} is not one of {list(FAMILIES)}",
                      config_validation.suggest(name, FAMILIES, "pick one of them"))
  return FAMILIES[name]


def validate(config, *, num_devices: int, process_count: int = 1, num_slices: int = 1, files: bool = True) -> None:
  """Raises config_validation.ConfigError (one line) for the first problem in `config`, before anything is built:
  its family's schema, the shared and the family's choices and bounds, the data's, the family's and the
  conditioning's rules, the files it names (unless `files=False`: what --mode=compile checks) and the mesh and batch
  against `num_devices` on `num_slices` slices and `process_count` processes."""
  family = family_class(config)
  config_validation.check_schema(config, family.schema())
  config_validation.check_values(config, {**config_validation.CHOICES, **family.CHOICES},
                                 {**config_validation.BOUNDS, **family.BOUNDS})
  data_registry.check_config(config, files)
  family.check_config(config, files)
  conditioning.check_config(config)
  if files:
    config_validation.check_paths(config)
  parallel.check_mesh_and_batch(config, num_devices, process_count, num_slices)


def check_workdir(config, workdir: str, *, mode: str = "train") -> None:
  """config_validation.check_workdir, with the config's family's schema for the keys a run's code did not have."""
  config_validation.check_workdir(config, workdir, schema=family_class(config).schema(), mode=mode)


__all__ = ["BUFFERS", "FAMILIES", "Family", "FeatureSpec", "FirstStage", "LossOutput", "abstract_model",
           "check_workdir", "family_class", "get", "restore_ema_weights", "restrict", "union", "validate"]
