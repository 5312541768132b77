"""The family interface: what the one trainer, the sampler, the evaluator and the exporter ask of a model family.

A family is a way to train and sample one inference model (a Gaussian UNet denoiser, a masked-token transformer,
a VQ autoencoder). The trainer never asks which family it runs; it calls these methods:

  SCHEMA, CHOICES, BOUNDS          its reference config (configs/<SCHEMA>: the keys and types its configs have) and
                                   its keys' registry names and numeric bounds, beside config_validation's shared ones
  check_config(config, files)      its own rules across keys (network shapes, first stage, feature grid)
  build(rngs)                      the inference model: what is EMA'd, sampled, checkpointed as `ema`, exported
  first_stage()                    a frozen model the family reads (a tokenizer, an autoencoder, the perceptual
                                   loss's network), or None
  auxiliary(rngs), auxiliary_optimizer()  a training-only module its loss trains beside the model (a patch
                                   discriminator) and that module's optimiser, or None
  loss(model, first_stage, batch, key[, auxiliary=, step=]) -> LossOutput
  feature_spec()                   the grid and widths a context head reads, or None where it does not apply
  sampler(model_def, first_stage_def, num_images) -> pure (weights, first_stage_weights, key, cond) -> images
  sample_request(num_images, offset)  what samples are asked for (classes, prompts), recorded beside them
  sample_cond(num_images, offset)  what a sampler is conditioned on (the request's cond, or images to reconstruct)
  inpainter(model_def, first_stage_def, num_images) -> pure (weights, first_stage_weights, key, images, known)
  score(model, samples)            metrics of its own for --mode=eval (a tokenizer's reconstruction error)
  EXPORT_FORMAT, IMPORT_FORMAT     the PyTorch formats its inference model goes to and comes from (export/ holds the
                                   converters, above the families; None: none)

Model state that is not trained by gradients (a VQ codebook's running averages) is held in `nnx.BatchStat`
variables: the loss may update them in place and the trainer carries them in the EMA tree unaveraged.
"""

import abc
import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from conprediff_jax import checkpointing, cli, conditioning, config_validation, parallel, sample_requests
from conprediff_jax import data as data_lib

# What a model may hold besides nnx.Param: statistics that its own loss updates (never the optimiser).
BUFFERS = nnx.BatchStat
DROP_CONDITION_STREAM = 1 << 20
Sampler = Callable[[Any, Any, jax.Array, dict | None], jax.Array]
Inpainter = Callable[[Any, Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossOutput:
  """A family's training objective for one batch.

  loss:     scalar, what the optimiser minimises (before any auxiliary context term)
  metrics:  scalars to log, named `loss_*` for the terms of `loss`
  features: [B, h, w, F] per-position features of the model's last block, for a context head (or None)
  targets:  [B, h, w, D] the clean signal on the same grid, the context head's targets (or None)
  denoised: [B, h, w, D] the model's own estimate of `targets` from its corrupted input (or None)
  signal:   [B] how much of each example's signal its input kept, in [0, 1]: abar_t for Gaussian noise, the
            unmasked fraction for masked tokens (or None); what the context term's timestep weighting reads
  """
  loss: jax.Array
  metrics: dict[str, jax.Array]
  features: jax.Array | None = None
  targets: jax.Array | None = None
  denoised: jax.Array | None = None
  signal: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """The grid a context head works on: `grid` x `grid` positions, `features` wide in, `targets` wide out."""
  grid: int
  features: int
  targets: int


@dataclasses.dataclass(frozen=True)
class FirstStage:
  """A frozen model read by a family: its graph, its inference weights (host arrays), and where they came from."""
  graphdef: nnx.GraphDef
  weights: Any
  source: str


class Family(abc.ABC):
  """One model family, bound to a config. Subclasses live in conprediff_jax/families/ and are named in FAMILIES."""

  SCHEMA: str = ""  # its reference config, a file in configs/
  CHOICES: dict[str, tuple] = {}
  BOUNDS: dict[str, config_validation.Bound] = {}
  EXPORT_FORMAT: str | None = None
  IMPORT_FORMAT: str | None = None

  @classmethod
  def schema(cls) -> ml_collections.FrozenConfigDict:
    """The reference config every config of this family matches, key for key and type for type."""
    return _load_schema(cls.SCHEMA)

  @classmethod
  def check_config(cls, config, files: bool) -> None:
    """Raises config_validation.ConfigError for the first problem across this family's keys; `files=False`: without
    what training reads from disk (a trained first stage, weights to start from), as --mode=compile checks."""

  def __init__(self, config, abstract_first_stage: bool = False):
    """`abstract_first_stage`: the first stage as shapes, from the config that trains it where none is trained
    (first_stage.abstract): a family that can be compiled (--mode=compile) but not run."""
    self.config = config
    self.abstract_first_stage = abstract_first_stage

  @abc.abstractmethod
  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    """The inference model, freshly initialised."""

  def first_stage(self) -> FirstStage | None:
    """The frozen model this family reads, loaded once per run; None for a family that reads pixels."""
    return None

  def auxiliary(self, rngs: nnx.Rngs) -> nnx.Module | None:
    """A training-only module the loss trains beside the model (a first stage's patch discriminator), or None. Its
    parameters are the state's `params["auxiliary"]`, updated by `auxiliary_optimizer()`, checkpointed with the
    run, never averaged, sampled or exported; the trainer passes it to `loss` as `auxiliary=`, with `step=`."""
    del rngs
    return None

  def auxiliary_optimizer(self) -> optax.GradientTransformation | None:
    """The optimiser of the `auxiliary` module's parameters."""
    return None

  @abc.abstractmethod
  def loss(self, model: nnx.Module, first_stage: nnx.Module | None, batch: dict[str, jax.Array],
           key: jax.Array) -> LossOutput:
    """The training loss on one batch (dropout and other training-only behaviour on). A family with an `auxiliary`
    module also takes `auxiliary` (that module) and `step` (the update's number, a traced int32)."""

  def feature_spec(self) -> FeatureSpec | None:
    """Where a context head applies; None means the context loss is not defined for this family."""
    return None

  @abc.abstractmethod
  def sampler(self, model_def: nnx.GraphDef, first_stage_def: nnx.GraphDef | None, num_images: int) -> Sampler:
    """A pure function `(weights, first_stage_weights, key, cond) -> images float32 [N, H, W, C] in [-1, 1]`."""

  def sample_request(self, num_images: int, offset: int = 0) -> dict | None:
    """What samples `offset .. offset + num_images` are asked for (sample_requests.request: the classes, the
    prompts, in turn); None for an unconditional model."""
    return sample_requests.request(self.config, num_images, offset)

  def sample_cond(self, num_images: int, offset: int = 0) -> dict | None:
    """The conditioning of samples `offset .. offset + num_images`: their request as the model's inputs."""
    return sample_requests.cond(self.config, self.sample_request(num_images, offset))

  def sample_cond_spec(self, num_images: int) -> dict | None:
    """The shapes of `sample_cond(num_images)`, from the config alone (--mode=compile reads no prompts or data)."""
    return conditioning.from_batch(data_lib.batch_spec(self.config, num_images), conditioning.model_keys(self.config))

  def inpainter(self, model_def: nnx.GraphDef, first_stage_def: nnx.GraphDef | None, num_images: int) -> Inpainter:
    """A pure function `(weights, first_stage_weights, key, images, known) -> images`: `images` float32
    [N, H, W, C] in [-1, 1], `known` bool [N, H, W, 1] (True = keep); the unknown pixels filled, the known ones
    returned unchanged."""
    del model_def, first_stage_def, num_images
    raise ValueError(f"--mode=inpaint: the {self.config.family!r} family does not inpaint (the 'gaussian' and "
                     "'masked' families do)")

  def drop_condition(self, batch: dict, key: jax.Array) -> dict:
    """The batch a conditional model trains on: its condition dropped to the null one at `train.cond_dropout`
    (conditioning.drop); an unconditional model's batch loses its condition keys."""
    cond = conditioning.from_batch(batch, conditioning.model_keys(self.config))
    rest = {k: v for k, v in batch.items() if k not in conditioning.KEYS}
    # A stream of its own, folded from the loss's key: the loss's own draws are the same with or without it.
    key = jax.random.fold_in(key, DROP_CONDITION_STREAM)
    return {**rest, **(conditioning.drop(cond, key, self.config.train.cond_dropout) or {})}

  def score_batch(self, model: nnx.Module, samples: np.ndarray, offset: int) -> dict[str, Any]:
    """Metrics of the family's own, beside the sample-quality ones, by map-reduce over the sample batches: totals
    (summed over batches) of these samples, numbers offset.. of sample_cond's order. None of its own: {}."""
    del model, samples, offset
    return {}

  def score(self, totals: dict[str, Any]) -> dict[str, float]:
    """The metrics from score_batch's totals over every batch."""
    del totals
    return {}


# ------------------------------------------------------------------------------------------------------------------
# A model's inference weights: its parameters and its buffers, as one nested dict with disjoint leaves.
# ------------------------------------------------------------------------------------------------------------------
def inference_model(model_def: nnx.GraphDef, weights) -> nnx.Module:
  """The model a sampler runs: merged from its inference weights, with `remat` off. Recomputing activations only
  trades memory in a backward pass, and nnx.remat cannot run a module merged outside a sampler's loop inside it."""
  model = nnx.merge(model_def, weights)
  if getattr(model, "remat", False):
    model.remat = False
  return model


def abstract_model(family: Family) -> tuple[nnx.GraphDef, dict, dict]:
  """(graph definition, Param shapes, buffer shapes) of the family's model, built without computing anything."""
  model = nnx.eval_shape(lambda: family.build(nnx.Rngs(0)))
  graphdef, params, buffers = nnx.split(model, nnx.Param, BUFFERS)
  return graphdef, params.to_pure_dict(), buffers.to_pure_dict()


def union(a: dict, b: dict) -> dict:
  """Two nested dicts with disjoint leaves as one (a model's parameters and its buffers)."""
  out = dict(a)
  for k, v in b.items():
    out[k] = union(out[k], v) if k in out else v
  return out


def restrict(tree: dict, like: dict) -> dict:
  """The part of `tree` with the keys of `like` (the parameters, or the buffers, of a union)."""
  return {k: restrict(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in like.items()}


def restore_ema_weights(family: Family, workdir: str, mesh, step: int | None = None):
  """(graph definition, EMA weights on `mesh`, their shardings, step) of the workdir's checkpoint at `step`, or of its
  newest one that reads: the model's parameters and buffers only, no optimiser state, no context head. Every reader
  of a workdir's weights comes here. An unreadable checkpoint is moved to corrupt_checkpoints/ with a warning and the
  next older one is read (checkpointing.restore_latest); FileNotFoundError, one line, when none reads, or when the
  `step` asked for does not."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(f"no checkpoint in {directory}: train first (--mode=train)")
  graphdef, params, buffers = abstract_model(family)
  abstract = union(params, buffers)
  shardings = parallel.state_shardings(mesh, abstract)
  manager = checkpointing.open_manager(directory, max_to_keep=family.config.checkpoint.max_to_keep)
  try:
    with jax.set_mesh(mesh):
      found = checkpointing.restore_latest(manager, abstract, shardings, step=step, ema_only=True)
  finally:
    manager.close()
  if found is None:
    asked = f"checkpoint {step}" if step is not None else "any checkpoint"
    raise FileNotFoundError(f"{directory}: {asked} is unreadable (moved to corrupt_checkpoints/; see the warnings): "
                            "train again, or restore the files")
  step, weights = found
  return graphdef, weights, shardings, step


@functools.cache
def _load_schema(name: str) -> ml_collections.FrozenConfigDict:
  return ml_collections.FrozenConfigDict(cli.load_config_file(
      os.path.join(cli.REPO, "configs", name)))
