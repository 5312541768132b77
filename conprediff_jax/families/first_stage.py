"""A frozen first stage (a VQ tokenizer, a KL autoencoder) read from the workdir where its own family trained it:
its config.json and the EMA weights of its latest checkpoint, as host arrays, read once per process. Or, for a
compile that needs shapes alone (--mode=compile), its weights' shapes from the config that would train it."""

import functools
import os

import jax
import ml_collections

from conprediff_jax import config_validation
from conprediff_jax.families.base import FirstStage


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  saved = config_validation.read_first_stage_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"config.first_stage.workdir={workdir!r} holds no trained first stage (no config.json)")
  return ml_collections.ConfigDict(saved)


def config_of(config, abstract: bool) -> ml_collections.ConfigDict:
  """The first stage's config: its run's (config.first_stage.workdir), or, `abstract`, also the one
  config.first_stage.config would train (config_validation.first_stage_config)."""
  if not abstract:
    return saved_config(config.first_stage.workdir)
  saved = config_validation.first_stage_config(config)
  if saved is None:
    raise FileNotFoundError(f"config.first_stage.workdir={config.first_stage.workdir!r} holds no trained first "
                            "stage and config.first_stage.config names none")
  return ml_collections.ConfigDict(saved)


def abstract(stage_config: ml_collections.ConfigDict) -> FirstStage:
  """The first stage `stage_config` trains, as shapes: its graph and its inference weights' ShapeDtypeStructs."""
  from conprediff_jax import families  # pylint: disable=g-import-not-at-top
  graphdef, params, buffers = families.abstract_model(families.get(stage_config))
  return FirstStage(graphdef, families.union(params, buffers), "shapes only")


def load(workdir: str, train_it: str) -> FirstStage:
  """The first stage trained in `workdir` (or a diffusers AutoencoderKL folder there); `train_it` (the command that
  trains one) completes the error when there is no checkpoint."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if config_validation.from_diffusers(saved_config(workdir)):  # not a run of ours
    graphdef, weights = _import(workdir)
    return FirstStage(graphdef, weights, f"{workdir} (diffusers)")
  checkpoints = os.path.join(workdir, "checkpoints")
  steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit()) if os.path.isdir(checkpoints) else []
  if not steps:
    raise FileNotFoundError(f"no first-stage checkpoint in {checkpoints}: {train_it}")
  graphdef, weights = _restore(workdir, steps[-1])
  return FirstStage(graphdef, weights, f"{workdir} step {steps[-1]}")


@functools.lru_cache(maxsize=4)
def _restore(workdir: str, step: int):
  # Imported here: sampling imports the families package, which imports this module.
  from conprediff_jax import families, parallel, sampling  # pylint: disable=g-import-not-at-top
  family = families.get(saved_config(workdir))
  axes = family.config.mesh.axes
  one_device = parallel.make_mesh((1,) * len(axes), axes, devices=jax.local_devices()[:1])
  graphdef, weights, _, _ = sampling.restore_ema_weights(family, workdir, one_device, step)
  return graphdef, jax.device_get(weights)


@functools.lru_cache(maxsize=4)
def _import(folder: str):
  from conprediff_jax import families  # pylint: disable=g-import-not-at-top
  from conprediff_jax.export import diffusers_import  # pylint: disable=g-import-not-at-top
  graphdef, abstract, _ = families.abstract_model(families.get(saved_config(folder)))
  return graphdef, diffusers_import.read_params(folder, abstract)
