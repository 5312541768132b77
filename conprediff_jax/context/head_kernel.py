"""The context head on a TPU as two Pallas kernels: the decoder's samples and the sorted solver in one pass.

With the solver a kernel of its own (sorted_kernel.py), what remained of the head's HBM traffic was the decoder: per
scored position and stride, XLA writes and reads its [D, Q] hidden layer before and after the GELU, its samples
and the gradients of each (docs/scaling.md, "The context head's cost on the slice"). Here a block of positions is
read once (the first layer's output, the noise, the neighbours and their mask), and the samples, hidden layers,
predictions, distances and gradients stay in the chip's vector memory:

- forward: z_q = mu + sigma * noise_q, x_qs = W2_s^T gelu(W1_s^T z_q + b1_s) + b2_s, distances W2^2(x_s, y_s);
- backward (recomputes the forward from the same inputs): the gradient in the first layer's output, and per block
  of positions the weight gradients, summed over the blocks outside.

The same decoder as ContextDecoder (decoder.py) and the same distances as sorted_solver.solve_points_major, on
the sorted solver's per-coordinate form (no random projections); tested against both by the Pallas interpreter.
Under a mesh (`jax.set_mesh`, as the train step runs) each device runs them on its own positions under
`jax.shard_map`, like sorted_kernel.solve.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from conprediff_jax.context import decoder as decoder_lib
from conprediff_jax.context import sorted_kernel

# Positions per kernel instance: a multiple of the TPU's 128 lanes, the largest that divides the positions and keeps
# the backward's live values in a core's vector memory: a stride's Q hidden layers before the GELU (D x block each)
# within BLOCK_VALUES, and the solver's C x block arrays within its own limit (sorted_kernel.BLOCK_VALUES).
BLOCKS = (512, 256, 128)
BLOCK_VALUES = 131072
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


def distances(decoder: decoder_lib.ContextDecoder, moments: jax.Array, noise: jax.Array, values: jax.Array,
              mask: jax.Array, *, interpret: bool = False) -> jax.Array:
  """W2^2 [S, M] between each position's decoded samples and its neighbours, per stride.

  Args:
    decoder: the context decoder (its parameters are differentiated).
    moments: [2L, M] the decoder's first layer on the M positions (`decoder.moments_of`), differentiated.
    noise: [Q, L, M] standard normal noise (`decoder.noise`).
    values: [N, S, C, M] the neighbours per stride, constants.
    mask: bool [N, S, M], the neighbours that count; every (stride, position) keeps at least one.
  """
  params = (decoder.w1[...], decoder.b1[...], decoder.w2[...], decoder.b2[...])
  keep = mask.astype(jnp.float32)
  values = jax.lax.stop_gradient(values.astype(jnp.float32))
  return _distances(params, moments.astype(jnp.float32), noise.astype(jnp.float32), values, keep, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _distances(params, moments, noise, values, keep, interpret):
  return _sharded(_forward, params, moments, noise, values, keep, interpret=interpret)


def _distances_fwd(params, moments, noise, values, keep, interpret):
  return _distances(params, moments, noise, values, keep, interpret), (params, moments, noise, values, keep)


def _distances_bwd(interpret, residuals, cotangent):
  params, moments, noise, values, keep = residuals
  grad_moments, *partials = _sharded(_backward, params, moments, noise, values, keep, cotangent, interpret=interpret)
  grad_params = tuple(jnp.sum(p, axis=0).reshape(w.shape) for p, w in zip(partials, params))
  return grad_params, grad_moments, jnp.zeros_like(noise), jnp.zeros_like(values), jnp.zeros_like(keep)


_distances.defvjp(_distances_fwd, _distances_bwd)


def _sharded(run, params, *arrays, interpret):
  """`run` on each device's own positions (the arrays' last axis) under the caller's mesh, or on all of them."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return run(params, *arrays, interpret=interpret)
  if arrays[0].shape[-1] % mesh.size:
    raise ValueError(f"head_kernel: {arrays[0].shape[-1]} positions do not split over the mesh's {mesh.size} "
                     "devices")
  split = lambda x: jax.P(*([None] * (x.ndim - 1)), mesh.axis_names)
  # The weight gradients per block ([blocks, S, ...], 4-D) stack over the devices; the rest split like the positions.
  out = jax.eval_shape(functools.partial(run, interpret=interpret), params, *arrays)
  out_specs = jax.tree.map(lambda x: jax.P(mesh.axis_names) if x.ndim == 4 else split(x), out)
  return jax.shard_map(functools.partial(run, interpret=interpret), mesh=mesh,
                       in_specs=(jax.P(), *map(split, arrays)), out_specs=out_specs, check_vma=False)(params, *arrays)


def _layout(params, moments, noise, values, keep, extra=()):
  """The kernels' operands: positions padded to a multiple of 128 (sorted_kernel.pad_sets; dropped by the caller),
  the weights as the kernels multiply them; the block size and the grid's BlockSpecs."""
  w1, b1, w2, b2 = params
  keep, (moments, noise, values, *extra) = sorted_kernel.pad_sets(keep, moments, noise, values, *extra)
  padded = moments.shape[-1]
  q, hidden, c = noise.shape[0], w1.shape[-1], w2.shape[-1]
  fits = lambda b: q * hidden * b <= BLOCK_VALUES and c * b <= sorted_kernel.BLOCK_VALUES
  block = next(b for b in BLOCKS if padded % b == 0 and (fits(b) or b == BLOCKS[-1]))
  weights = (jnp.swapaxes(w1, 1, 2), b1[..., None], jnp.swapaxes(w2, 1, 2), b2[..., None], w1, w2)
  whole = lambda w: pl.BlockSpec(w.shape, lambda i: (0,) * w.ndim)
  blocked = lambda v: pl.BlockSpec(v.shape[:-1] + (block,), lambda i: (0,) * (v.ndim - 1) + (i,))
  operands = (moments, noise, values, keep, *extra)
  specs = [*map(blocked, operands), *map(whole, weights)]
  return operands + weights, specs, block, padded


def _forward(params, moments, noise, values, keep, *, interpret):
  """distances [S, M] by the forward kernel."""
  operands, specs, block, padded = _layout(params, moments, noise, values, keep)
  strides, m = values.shape[1], moments.shape[-1]
  out = pl.pallas_call(
      functools.partial(_forward_kernel, strides=strides), grid=(padded // block,), in_specs=specs,
      out_specs=pl.BlockSpec((strides, block), lambda i: (0, i)),
      out_shape=jax.ShapeDtypeStruct((strides, padded), jnp.float32),
      cost_estimate=_cost(params, noise.shape[0], values.shape[0], padded, padded // block, backward=False),
      interpret=interpret)(*operands)
  return out[:, :m]


def _backward(params, moments, noise, values, keep, cotangent, *, interpret):
  """(the gradient in moments [2L, M], the weight gradients summed per block [blocks, ...]) by the backward kernel."""
  operands, specs, block, padded = _layout(params, moments, noise, values, keep, extra=(cotangent,))
  blocks, m = padded // block, moments.shape[-1]
  w1, b1, w2, b2 = params
  partial_shapes = [(blocks,) + s for s in (w1.shape[:1] + w1.shape[:0:-1], b1.shape + (1,),
                                            w2.shape[:1] + w2.shape[:0:-1], b2.shape + (1,))]
  out = pl.pallas_call(
      functools.partial(_backward_kernel, strides=values.shape[1]), grid=(blocks,), in_specs=specs,
      out_specs=[pl.BlockSpec((moments.shape[0], block), lambda i: (0, i)),
                 *(pl.BlockSpec((None,) + s[1:], lambda i: (i, 0, 0, 0)) for s in partial_shapes)],
      out_shape=[jax.ShapeDtypeStruct((moments.shape[0], padded), jnp.float32),
                 *(jax.ShapeDtypeStruct(s, jnp.float32) for s in partial_shapes)],
      cost_estimate=_cost(params, noise.shape[0], values.shape[0], padded, blocks, backward=True),
      interpret=interpret)(*operands)
  grad_moments, gw1t, gb1, gw2t, gb2 = out
  return grad_moments[:, :m], jnp.swapaxes(gw1t, 2, 3), gb1, jnp.swapaxes(gw2t, 2, 3), gb2


def _cost(params, q: int, n: int, positions: int, blocks: int, *, backward: bool) -> pl.CostEstimate:
  """What a kernel does, for XLA's cost analysis (which cannot see into it): the decoder's matrix products (the
  forward's 2, recomputed by the backward beside its 4), the solver's element operations (sorted_kernel's count), the
  GELUs' tanh and sigma's exp, and the HBM traffic: every operand read once (the weights, in both layouts the
  kernels multiply them in, once per block), the results written once (the backward's weight gradients per block)."""
  w1, _, w2, _ = params
  strides, latent, hidden = w1.shape
  c = w2.shape[-1]
  products = (3 if backward else 1) * 2 * (latent * hidden + hidden * c)
  per_position = strides * (q * products + sorted_kernel.set_flops(q, n, c))
  inputs = 2 * latent + q * latent + strides * n * (c + 1) + (strides if backward else 0)
  outputs = 2 * latent if backward else strides
  weights = sum(w.size for w in params)
  weight_values = blocks * (2 * weights + (weights if backward else 0))
  return pl.CostEstimate(flops=positions * per_position, transcendentals=positions * (latent + strides * q * hidden),
                         bytes_accessed=4 * (positions * (inputs + outputs) + weight_values))


def _samples(moments_ref, noise_ref):
  """z_q [L, block] for each of the Q samples, and what their gradient needs: sigma, and where log sigma is clipped."""
  latent = noise_ref.shape[1]
  log_sigma = moments_ref[latent:, :]
  low, high = decoder_lib.LOG_SIGMA_RANGE
  sigma = jnp.exp(jnp.clip(log_sigma, low, high))
  mu = moments_ref[:latent, :]
  return [mu + sigma * noise_ref[q] for q in range(noise_ref.shape[0])], sigma, (log_sigma >= low) & (log_sigma <= high)


def _layer(w1t_ref, b1_ref, s, z):
  """The hidden layer before its GELU, [D, block]."""
  return jnp.dot(w1t_ref[s], z, preferred_element_type=jnp.float32) + b1_ref[s]


def _gelu(pre):
  """jax.nn.gelu (its tanh form, ContextDecoder's) and its derivative."""
  inner = _SQRT_2_OVER_PI * (pre + 0.044715 * pre * pre * pre)
  t = jnp.tanh(inner)
  slope = 0.5 * (1.0 + t) + 0.5 * pre * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * pre * pre)
  return 0.5 * pre * (1.0 + t), slope


def _stride(s, zs, values_ref, keep_ref, w1t_ref, b1_ref, w2t_ref, b2_ref):
  """Stride s of a block: its Q hidden layers (after the GELU, and the GELU's slope: [D, block] each), distances
  [1, block] and the gradient of the distances in the predictions ([C, block] each)."""
  n = values_ref.shape[0]
  hidden = [_gelu(_layer(w1t_ref, b1_ref, s, z)) for z in zs]
  xs = [jnp.dot(w2t_ref[s], act, preferred_element_type=jnp.float32) + b2_ref[s] for act, _ in hidden]
  ys = [values_ref[j, s] for j in range(n)]
  keep = [keep_ref[j, pl.ds(s, 1), :] > 0 for j in range(n)]
  distance, grads = sorted_kernel.distance_and_gradient(xs, ys, keep)
  return hidden, distance, grads


def _forward_kernel(moments_ref, noise_ref, values_ref, keep_ref, w1t_ref, b1_ref, w2t_ref, b2_ref, w1_ref, w2_ref,
                    distances_ref, *, strides):
  del w1_ref, w2_ref
  zs, _, _ = _samples(moments_ref, noise_ref)
  for s in range(strides):
    _, distance, _ = _stride(s, zs, values_ref, keep_ref, w1t_ref, b1_ref, w2t_ref, b2_ref)
    distances_ref[pl.ds(s, 1), :] = distance


def _backward_kernel(moments_ref, noise_ref, values_ref, keep_ref, cotangent_ref, w1t_ref, b1_ref, w2t_ref, b2_ref,
                     w1_ref, w2_ref, grad_moments_ref, gw1t_ref, gb1_ref, gw2t_ref, gb2_ref, *, strides):
  zs, sigma, unclipped = _samples(moments_ref, noise_ref)
  nt = (((1,), (1,)), ((), ()))  # a @ b.T: the block's positions summed
  grad_zs = [jnp.zeros_like(z) for z in zs]
  for s in range(strides):
    hidden, _, grads = _stride(s, zs, values_ref, keep_ref, w1t_ref, b1_ref, w2t_ref, b2_ref)
    weight = cotangent_ref[pl.ds(s, 1), :]
    gw1t, gb1, gw2t, gb2 = (jnp.zeros(r.shape[1:], jnp.float32) for r in (gw1t_ref, gb1_ref, gw2t_ref, gb2_ref))
    for q, (z, (act, slope), grad) in enumerate(zip(zs, hidden, grads)):
      grad_x = grad * weight  # [C, block]
      gw2t = gw2t + jax.lax.dot_general(grad_x, act, nt, preferred_element_type=jnp.float32)
      gb2 = gb2 + jnp.sum(grad_x, axis=1, keepdims=True)
      grad_pre = jnp.dot(w2_ref[s], grad_x, preferred_element_type=jnp.float32) * slope  # [D, block]
      gw1t = gw1t + jax.lax.dot_general(grad_pre, z, nt, preferred_element_type=jnp.float32)
      gb1 = gb1 + jnp.sum(grad_pre, axis=1, keepdims=True)
      grad_zs[q] = grad_zs[q] + jnp.dot(w1_ref[s], grad_pre, preferred_element_type=jnp.float32)
    gw1t_ref[s], gb1_ref[s], gw2t_ref[s], gb2_ref[s] = gw1t, gb1, gw2t, gb2
  latent = noise_ref.shape[1]
  grad_moments_ref[:latent, :] = sum(grad_zs)
  grad_sigma = sum(g * noise_ref[q] for q, g in enumerate(grad_zs))
  grad_moments_ref[latent:, :] = jnp.where(unclipped, grad_sigma * sigma, 0.0)
