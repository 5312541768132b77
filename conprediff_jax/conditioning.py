"""What a model is conditioned on, for every family: the `cond` dict, condition dropout, classifier-free guidance.

A `cond` is a dict of per-example arrays (leading axis: the batch), or None for an unconditional model:

  "label"  int32 [B]  a class in [0, num_classes), or NULL_LABEL: "no class", the model's unconditional input

Data batches carry the same keys beside "image" (`from_batch` takes them out). A model maps NULL_LABEL to a
learned null embedding, so one network is both the conditional and the unconditional model that guidance needs.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

NULL_LABEL = -1
KEYS = ("label",)


def from_batch(batch: dict) -> dict | None:
  """The conditioning keys of a data batch (None if it has none)."""
  cond = {k: batch[k] for k in KEYS if k in batch}
  return cond or None


def null_like(cond: dict) -> dict:
  """The unconditional input with the shapes of `cond`."""
  return {k: jnp.full_like(v, NULL_LABEL) for k, v in cond.items()}


def drop(cond: dict | None, key: jax.Array, rate: float) -> dict | None:
  """Condition dropout: each example's whole condition is replaced by the null one with probability `rate`, so
  training also fits the unconditional model (Ho & Salimans 2022)."""
  if cond is None or rate <= 0:
    return cond
  batch = jax.tree.leaves(cond)[0].shape[0]
  dropped = jax.random.bernoulli(key, rate, (batch,))
  null = null_like(cond)
  return {k: jnp.where(dropped.reshape((batch,) + (1,) * (v.ndim - 1)), null[k], v) for k, v in cond.items()}


def classifier_free(fn: Callable, cond: dict | None, scale: float) -> Callable:
  """`fn(*inputs, cond) -> out` guided: `*inputs -> u + scale * (c - u)`, with c and u the conditional and
  unconditional outputs (eps, v or logits: guidance is linear in any of them). scale 1 is the conditional model
  alone (no extra work), 0 the unconditional one. Both halves run as one forward pass over a doubled batch, not
  two sequential ones."""
  if cond is None or scale == 1.0:
    return lambda *inputs: fn(*inputs, cond)
  both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, null_like(cond))

  def guided(*inputs):  # inputs may be pytrees (None included): every array is doubled along its batch axis
    out = fn(*jax.tree.map(lambda x: jnp.concatenate([x, x]), inputs), both)
    conditional, unconditional = jnp.split(out, 2)
    return unconditional + scale * (conditional - unconditional)

  return guided
