"""Jitted sampling from a model's inference weights alone, for any family.

`make_sample_fn` closes over the model's graph definition and nothing else, so the compiled sampler cannot reach a
training-only module: its array inputs are the inference weights (the train state's `ema`), the frozen first
stage's weights (None for a pixel-space family), a key and the conditioning.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from conprediff_jax import families
from conprediff_jax import parallel
from conprediff_jax import sample_requests


def make_sample_fn(family: families.Family, model_def: nnx.GraphDef, num_images: int, *,
                   first_stage_def: nnx.GraphDef | None = None, mesh=None, weight_shardings=None):
  """-> jitted `(weights, first_stage_weights, key, cond) -> images float32 [N, H, W, C] in [-1, 1]`. Weights kept
  split over `fsdp` (`weight_shardings`) are gathered whole once per call, as the train step gathers them
  (parallel.compute_shardings): left to itself the partitioner kept some split and moved activations to them."""
  sample_fn = family.sampler(model_def, first_stage_def, num_images)
  if mesh is None:
    return jax.jit(sample_fn)
  compute = None if weight_shardings is None else parallel.compute_shardings(weight_shardings)
  if compute is not None:
    sample_split = sample_fn
    sample_fn = lambda weights, *rest: sample_split(jax.lax.with_sharding_constraint(weights, compute), *rest)
  divisible = num_images % parallel.data_parallel_size(mesh) == 0
  out = parallel.batch_sharding(mesh) if divisible else parallel.replicated(mesh)
  replicated = parallel.replicated(mesh)
  return jax.jit(sample_fn, in_shardings=(weight_shardings, replicated, replicated, replicated), out_shardings=out)


def sample_batches(family: families.Family, sample_fn, weights, first_stage_weights, key, num_images: int,
                   batch_size: int, *, first_batch: int = 0, progress: bool = False):
  """Yields `(offset, images, asked)` for each batch of `batch_size` samples, from batch `first_batch` on: images
  [n, H, W, C] in [-1, 1] on the host (the last batch cut to `num_images`), and what each was asked for (`records`).
  Batch i depends only on (key, i, batch_size): a stream resumed at `first_batch` is the same stream. The progress
  bar shows images/s and the time left."""
  starts = range(0, num_images, batch_size)
  bar = tqdm(total=num_images, initial=min(first_batch * batch_size, num_images), desc="sampling", unit="img",
             disable=not progress or jax.process_index() != 0)
  for i in range(first_batch, len(starts)):
    start = starts[i]
    n = min(batch_size, num_images - start)
    cond = family.sample_cond(batch_size, offset=start)
    images = parallel.to_host(sample_fn(weights, first_stage_weights, jax.random.fold_in(key, i), cond))[:n]
    yield start, images, records(family, n, start)
    bar.update(n)
  bar.close()


def records(family: families.Family, num_images: int, offset: int) -> dict[str, np.ndarray]:
  """What samples offset..offset + num_images were asked for: a dict of [n] arrays, empty for an unconditional
  model; "labels" the class each should show (where one is implied), "prompts" and "prompt_index" its prompt."""
  request = family.sample_request(num_images, offset=offset)
  asked = {"labels": sample_requests.classes(family.config, request)}
  if request and "prompt" in request:
    asked.update(prompts=request["prompt"], prompt_index=request["prompt_index"])
  return {k: v for k, v in asked.items() if v is not None}


def generate(family: families.Family, sample_fn, weights, first_stage_weights, key, num_images: int,
             batch_size: int, *, progress: bool = False):
  """All of `sample_batches` at once: (images [N, H, W, C] in [-1, 1], records [N])."""
  batches = list(sample_batches(family, sample_fn, weights, first_stage_weights, key, num_images, batch_size,
                                progress=progress))
  images = np.concatenate([b[1] for b in batches])
  return images, {k: np.concatenate([b[2][k] for b in batches]) for k in batches[0][2]}


def put_first_stage(first_stage: families.FirstStage | None, mesh):
  """The frozen first stage's weights on `mesh` (large arrays fsdp-sharded, as the state's are); None if none."""
  if first_stage is None:
    return None
  return jax.device_put(first_stage.weights, parallel.state_shardings(mesh, first_stage.weights))


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A checkpoint's inference weights on the config's mesh, with what inference needs to run them."""
  family: families.Family
  model_def: nnx.GraphDef
  weights: Any
  shardings: Any
  mesh: jax.sharding.Mesh
  step: int
  first_stage_def: nnx.GraphDef | None
  first_stage_weights: Any

  def sample_fn(self, num_images: int):
    return make_sample_fn(self.family, self.model_def, num_images, first_stage_def=self.first_stage_def,
                          mesh=self.mesh, weight_shardings=self.shardings)


def load_latest_ema(config, workdir: str) -> TrainedModel:
  """The EMA weights of the workdir's latest checkpoint on the config's mesh, with the family's first stage."""
  family = families.get(config)
  mesh = parallel.make_mesh(config.mesh.shape, config.mesh.axes)
  graphdef, weights, shardings, step = families.restore_ema_weights(family, workdir, mesh)
  first_stage = family.first_stage()
  return TrainedModel(family, graphdef, weights, shardings, mesh, step,
                      None if first_stage is None else first_stage.graphdef, put_first_stage(first_stage, mesh))
