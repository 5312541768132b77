"""Jitted sampling from the denoiser's parameters alone.

`make_sample_fn` closes over the denoiser's graph definition and nothing else, so the compiled sampler cannot
reach a training-only module: its only array inputs are the denoiser parameters and a key.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax import parallel
from conprediff_jax.diffusion import samplers
from conprediff_jax.diffusion.gaussian import GaussianDiffusion


def sample_labels(config, num_images: int):
  """Class-conditional models sample the classes in turn (0, 1, ..., 0, 1, ...); others take no labels."""
  if not config.model.class_conditional:
    return None
  return jnp.arange(num_images, dtype=jnp.int32) % config.data.num_classes


def make_sample_fn(config, denoiser_def: nnx.GraphDef, diffusion: GaussianDiffusion, mesh=None,
                   param_shardings=None):
  """-> jitted `(denoiser_params, key) -> images float32 [N, H, W, C] in [-1, 1]`."""
  s, d = config.sample, config.data
  shape = (s.num_images, d.image_size, d.image_size, d.channels)
  labels = sample_labels(config, s.num_images)

  def sample_fn(params, key):
    denoiser = nnx.merge(denoiser_def, params)
    apply = lambda x, t: denoiser(x, t, labels)[0]
    return samplers.sample(apply, diffusion, key, shape, sampler=s.sampler, steps=s.steps, eta=s.eta)

  if mesh is None:
    return jax.jit(sample_fn)
  divisible = s.num_images % parallel.data_parallel_size(mesh) == 0
  out = parallel.batch_sharding(mesh) if divisible else parallel.replicated(mesh)
  return jax.jit(sample_fn, in_shardings=(param_shardings, parallel.replicated(mesh)), out_shardings=out)
