"""A frozen first stage (a VQ tokenizer, a KL autoencoder) read from the workdir where its own family trained it:
its config.json and the EMA weights of its latest checkpoint, as host arrays, read once per process; or a diffusers
AutoencoderKL folder, read as the KL autoencoder it is. Or, for a compile that needs shapes alone (--mode=compile),
its weights' shapes from the config that would train it (config.first_stage.config)."""

import functools
import json
import os

import jax
import ml_collections
import numpy as np

from conprediff_jax import cli, parallel
from conprediff_jax.config_validation import ConfigError
from conprediff_jax.families.base import FirstStage, abstract_model, restore_ema_weights, union
from conprediff_jax.models import diffusers_layout, vq


def read_config(workdir: str) -> dict | None:
  """The config.json a first-stage run wrote into its workdir, or None when there is none. A diffusers
  AutoencoderKL folder reads as the config of the KL autoencoder it imports as (with diffusers' scaling factor)."""
  path = os.path.join(os.path.expanduser(workdir), "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  if saved.get("_class_name") == "AutoencoderKL":
    base = cli.load_config_file(os.path.join(cli.REPO, "configs", "digits_kl.py"))
    return diffusers_layout.autoencoder_config(saved, base.to_dict())
  if saved.get("_class_name") == "VQModel":
    base = cli.load_config_file(os.path.join(cli.REPO, "configs", "digits_vq.py"))
    return diffusers_layout.vq_config(saved, base.to_dict())
  return saved


def config_of_workdir(workdir: str) -> ml_collections.ConfigDict:
  saved = read_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"config.first_stage.workdir={workdir!r} holds no trained first stage (no config.json)")
  return ml_collections.ConfigDict(saved)


def stage_config(config) -> dict | None:
  """The config of the first stage `config` reads: the one its run saved in config.first_stage.workdir, or, where
  that holds none, the one config.first_stage.config names (the config that would train it: enough for shapes,
  as --mode=compile needs); None when neither is there."""
  stage = config.get("first_stage", None)
  if not stage or not stage.workdir:
    return None
  saved = read_config(stage.workdir)
  if saved is None and stage.get("config", ""):
    saved = cli.load_config_file(stage.config).to_dict()
  return saved


def config_of(config, abstract: bool) -> ml_collections.ConfigDict:
  """The first stage's config: its run's (config.first_stage.workdir), or, `abstract`, also the one
  config.first_stage.config would train (stage_config)."""
  if not abstract:
    return config_of_workdir(config.first_stage.workdir)
  saved = stage_config(config)
  if saved is None:
    raise FileNotFoundError(f"config.first_stage.workdir={config.first_stage.workdir!r} holds no trained first "
                            "stage and config.first_stage.config names none")
  return ml_collections.ConfigDict(saved)


def from_diffusers(saved) -> bool:
  """Whether a first stage's config (read_config) is a diffusers folder's: an AutoencoderKL's carries the diffusers
  scaling factor, a VQModel's says so."""
  return "scaling_factor" in saved or "diffusers" in saved


def has_weights(workdir: str) -> bool:
  """Whether a first stage's folder holds weights: a run's checkpoints, or a diffusers folder's safetensors."""
  workdir = os.path.expanduser(workdir)
  return (os.path.isdir(os.path.join(workdir, "checkpoints"))
          or os.path.exists(os.path.join(workdir, diffusers_layout.WEIGHTS_NAME)))


def token_grid(saved: dict) -> int:
  """A tokenizer's grid: its image size over its downsampling (one halving per level after the first)."""
  return saved["data"]["image_size"] // 2 ** (len(saved["model"]["channel_mults"]) - 1)


def check(config, *, family: str, kind: str, make: str, files: bool, diffusers: str = "") -> dict:
  """config.first_stage.workdir holds a trained `family` run (`kind` in messages) of the config's image shape, or a
  folder of the diffusers class `diffusers` (AutoencoderKL, VQModel) that reads as one; `make` says how to train it.
  Without `files` (--mode=compile), the config that would train it (config.first_stage.config) stands in for the
  run. Returns the first stage's config."""
  workdir = config.first_stage.workdir
  what = f"{kind} (nor a diffusers {diffusers} folder)" if diffusers else kind
  if files:
    saved = read_config(workdir) if workdir else None
    trained = has_weights if diffusers else lambda w: os.path.isdir(os.path.join(os.path.expanduser(w), "checkpoints"))
    if saved is None or not trained(workdir):
      raise ConfigError("first_stage.workdir", f"{workdir!r} holds no trained {what}", make)
  else:
    saved = stage_config(config)
    if saved is None:
      raise ConfigError("first_stage.config", f"is empty and {workdir!r} holds no trained {what}, so its shapes are "
                        "unknown", "name the config that trains it, e.g. configs/paper_kl.py:celebahq")
  if saved.get("family") != family:
    raise ConfigError("first_stage.workdir", f"{workdir!r} holds a {saved.get('family', 'gaussian')!r} run, not a "
                      f"{kind} (family {family!r})", make)
  for key in ("image_size", "channels"):
    if saved["data"][key] != config.data[key]:
      raise ConfigError(f"data.{key}", f"{config.data[key]} but the {kind} in {workdir!r} was trained with "
                        f"{saved['data'][key]}", f"set config.data.{key}={saved['data'][key]}")
  return saved


def load(workdir: str, family: type, train_it: str) -> FirstStage:
  """The first stage of `family` (its class) trained in `workdir` (or a diffusers AutoencoderKL folder there);
  `train_it` (the command that trains one) completes the error when there is no checkpoint."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if from_diffusers(config_of_workdir(workdir)):  # not a run of ours
    graphdef, weights = _import(workdir, family)
    return FirstStage(graphdef, weights, f"{workdir} (diffusers)")
  checkpoints = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(checkpoints) or not any(name.isdigit() for name in os.listdir(checkpoints)):
    raise FileNotFoundError(f"no first-stage checkpoint in {checkpoints}: {train_it}")
  graphdef, weights, step = _restore(workdir, family)
  return FirstStage(graphdef, weights, f"{workdir} step {step}")


def abstract(stage: ml_collections.ConfigDict, family: type) -> FirstStage:
  """The first stage of `family` (its class) that `stage` (its config) trains, as shapes: its graph and its
  inference weights' ShapeDtypeStructs."""
  graphdef, params, buffers = abstract_model(family(stage))
  return FirstStage(graphdef, union(params, buffers), "shapes only")


@functools.lru_cache(maxsize=4)
def _restore(workdir: str, family: type):
  """The newest readable checkpoint's EMA weights (restore_ema_weights), as host arrays, read once per process."""
  stage = family(config_of_workdir(workdir))
  axes = stage.config.mesh.axes
  one_device = parallel.make_mesh((1,) * len(axes), axes, devices=jax.local_devices()[:1])
  graphdef, weights, _, step = restore_ema_weights(stage, workdir, one_device)
  return graphdef, jax.device_get(weights), step


@functools.lru_cache(maxsize=4)
def _import(folder: str, family: type):
  """A diffusers AutoencoderKL's parameters, or a VQModel's and its codebook (`quantize.embedding.weight`, our
  buffer, with fresh EMA statistics)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  graphdef, abstract_params, abstract_buffers = abstract_model(family(config_of_workdir(folder)))
  tensors = dict(load_file(os.path.join(folder, diffusers_layout.WEIGHTS_NAME)))
  codebook = tensors.pop("quantize.embedding.weight", None)
  params = diffusers_layout.read_params(folder, abstract_params, tensors)
  if not abstract_buffers:
    return graphdef, params
  if codebook is None:
    raise ValueError(f"{folder}: no quantize.embedding.weight (the VQModel's codebook) in its weights")
  return graphdef, union(params, vq.codebook_buffers(np.asarray(codebook, np.float32)))
