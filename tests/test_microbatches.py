"""Gradient accumulation (config.train.microbatches): the same update as one step on the whole batch, with the
activations of one part.

A family whose loss is a deterministic mean over examples (no noise draws) makes "the same update" exact: the
accumulated step is compared with the whole-batch step on every array of the new state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conprediff_jax import families, train
from tests.conftest import tiny_config


class _Reconstruct(families.Family):
  """A 3x3 convolution trained to reproduce its input: a loss with no randomness, a mean over examples."""

  def build(self, rngs):
    return nnx.Sequential(nnx.Conv(1, 8, (3, 3), rngs=rngs), nnx.silu, nnx.Conv(8, 1, (3, 3), rngs=rngs))

  def loss(self, model, first_stage, batch, key):
    del first_stage, key
    mse = jnp.mean(jnp.square(model(batch["image"]) - batch["image"]))
    return families.LossOutput(mse, {"loss_point": mse})

  def sampler(self, model_def, first_stage_def, num_images):
    raise NotImplementedError


def _step(microbatches: int, batch):
  config = tiny_config()
  config.context.weight = 0.0
  config.train.microbatches = microbatches
  exp = train.make_experiment(config, _Reconstruct(config))
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  for _ in range(3):  # past the first step, where Adam's update is the sign of the gradient whatever its size
    state, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1))
  return state, metrics


def test_accumulated_update_equals_the_whole_batch_update():
  batch = {"image": jax.random.uniform(jax.random.key(2), (16, 8, 8, 1), minval=-1, maxval=1),
           "label": jnp.zeros((16,), jnp.int32)}
  whole, whole_metrics = _step(1, batch)
  for parts in (2, 4):
    accumulated, metrics = _step(parts, batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(whole_metrics["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(whole_metrics["grad_norm"]), rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(accumulated), jax.tree.leaves(whole)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6,
                                 err_msg=f"{parts} parts: {jax.tree_util.keystr(path)}")


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it (CI runs it second)
def test_parts_hold_less_memory_and_train_the_gaussian_family():
  """The real step (noise, context head) accumulated over 4 parts: finite, and its compiled temporaries smaller."""
  temps, batch = {}, None
  for parts in (1, 4):
    config = tiny_config()
    config.train.batch_size, config.train.microbatches = 16, parts
    exp = train.make_experiment(config)
    state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
    batch = {"image": jax.random.uniform(jax.random.key(2), (16, 8, 8, 1), minval=-1, maxval=1)}
    compiled = jax.jit(functools.partial(train.train_step, exp)).lower(state, batch, jax.random.key(1)).compile()
    temps[parts] = compiled.memory_analysis().temp_size_in_bytes
    _, metrics = compiled(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0
  assert temps[4] < 0.6 * temps[1], temps
