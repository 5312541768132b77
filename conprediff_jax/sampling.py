"""Jitted sampling from the denoiser's parameters alone.

`make_sample_fn` closes over the denoiser's graph definition and nothing else, so the compiled sampler cannot
reach a training-only module: its only array inputs are the denoiser parameters, a key and optional labels.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from conprediff_jax import checkpointing
from conprediff_jax import parallel
from conprediff_jax.models import abstract_denoiser
from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import GaussianDiffusion


def sample_labels(config, num_images: int, offset: int = 0):
  """Class-conditional models sample the classes in turn (0, 1, ..., 0, 1, ...); others take no labels."""
  if not config.model.class_conditional:
    return None
  return (jnp.arange(offset, offset + num_images, dtype=jnp.int32)) % config.data.num_classes


def make_sample_fn(config, denoiser_def: nnx.GraphDef, num_images: int | None = None, mesh=None,
                   param_shardings=None):
  """-> jitted `(denoiser_params, key, labels | None) -> images float32 [N, H, W, C] in [-1, 1]`."""
  s, d = config.sample, config.data
  num_images = num_images or s.num_images
  shape = (num_images, d.image_size, d.image_size, d.channels)
  diffusion = GaussianDiffusion.from_config(config)

  def sample_fn(params, key, labels):
    denoiser = nnx.merge(denoiser_def, params)
    apply = lambda x, t: denoiser(x, t, labels)[0]
    return samplers.sample(apply, diffusion, key, shape, sampler=s.sampler, steps=s.steps, eta=s.eta)

  if mesh is None:
    return jax.jit(sample_fn)
  divisible = num_images % parallel.data_parallel_size(mesh) == 0
  out = parallel.batch_sharding(mesh) if divisible else parallel.replicated(mesh)
  replicated = parallel.replicated(mesh)
  return jax.jit(sample_fn, in_shardings=(param_shardings, replicated, replicated), out_shardings=out)


def generate(config, sample_fn, params, key, num_images: int, batch_size: int, *, progress: bool = False):
  """`num_images` samples as uint8-ready floats [N, H, W, C] plus their labels (or None), in fixed-size batches."""
  batches, labels = [], []
  for i, start in enumerate(tqdm(range(0, num_images, batch_size), desc="sampling", unit="batch",
                                 disable=not progress or jax.process_index() != 0)):
    batch_labels = sample_labels(config, batch_size, offset=start)
    batches.append(parallel.to_host(sample_fn(params, jax.random.fold_in(key, i), batch_labels)))
    if batch_labels is not None:
      labels.append(np.asarray(batch_labels))
  images = np.concatenate(batches)[:num_images]
  return images, (np.concatenate(labels)[:num_images] if labels else None)


@dataclasses.dataclass(frozen=True)
class TrainedDenoiser:
  """A checkpoint's EMA parameters on the config's mesh, with what inference needs to run them."""
  graphdef: nnx.GraphDef
  params: Any
  shardings: Any
  mesh: jax.sharding.Mesh
  step: int


def load_latest_ema(config, workdir: str) -> TrainedDenoiser:
  """Restores only the EMA parameters of the workdir's latest checkpoint: no optimiser state, no context head."""
  directory = os.path.join(workdir, "checkpoints")
  missing = FileNotFoundError(f"no checkpoint in {directory}: train first (--mode=train)")
  if not os.path.isdir(directory):
    raise missing
  mesh = parallel.make_mesh(config.mesh.shape, config.mesh.axes)
  _, graphdef, abstract_ema = abstract_denoiser(config)
  shardings = parallel.state_shardings(mesh, abstract_ema)
  manager = checkpointing.open_manager(directory, max_to_keep=config.checkpoint.max_to_keep)
  try:
    step = manager.latest_step()
    if step is None:
      raise missing
    with jax.set_mesh(mesh):
      params = checkpointing.restore_ema(manager, step, abstract_ema, shardings)
  finally:
    manager.close()
  return TrainedDenoiser(graphdef, params, shardings, mesh, step)
