"""Layers the networks share (NHWC; `dtype` is the compute dtype, parameters stay float32)."""

import jax.numpy as jnp
from flax import nnx


def conv(cin: int, cout: int, rngs: nnx.Rngs, dtype, kernel: int = 3, stride: int = 1) -> nnx.Conv:
  """A 'same'-padded convolution (explicit padding, as PyTorch's, so exported weights behave identically)."""
  pad = kernel // 2
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                  dtype=dtype, rngs=rngs)


def group_norm(channels: int, groups: int, rngs: nnx.Rngs, dtype, *, epsilon: float) -> nnx.GroupNorm:
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=epsilon, dtype=dtype, rngs=rngs)


def class_ids(labels, num_embeddings: int, batch: int):
  """The class-embedding row of each example: the last row, the learned null class, where there is no label
  (`labels` None, or negative: conditioning.NULL_LABEL)."""
  null = num_embeddings - 1
  if labels is None:
    return jnp.full((batch,), null, jnp.int32)
  return jnp.where(labels < 0, null, labels)


def run_block(block, *args, remat: bool = False):
  """`block(*args)`; with `remat`, its activations are recomputed in the backward pass instead of kept (less
  memory for more compute, the same values): `model.remat`."""
  return nnx.remat(lambda b, *a: b(*a))(block, *args) if remat else block(*args)


def space_to_depth(x, patch: int):
  """`x [B, H, W, C] -> [B, H/p, W/p, p * p * C]`, each p x p patch's values in row-major (row, column, channel)
  order, as a DiT's output projection lays them out."""
  if patch == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // patch, w // patch, patch * patch * c)
