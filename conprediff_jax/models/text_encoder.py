"""What a text-conditional network attends to: a prompt as a sequence of context vectors with a validity mask.

Two encoders, by config.text.encoder:
  "bytes"        a small transformer over the prompt's UTF-8 bytes, trained jointly with the denoiser: for data
                 that comes with captions but no embeddings (the embedded digits);
  "precomputed"  embeddings a frozen encoder (T5, CLIP) produced ahead of time and the data carries: how large runs
                 condition on text without running that encoder in the training loop.

Either way position 0 of the context is a learned vector that is always valid: the whole context of the null
(empty) prompt, which classifier-free guidance needs, and somewhere for attention to go when a prompt says little.
Stable Diffusion's UNets have no such position: they attend to the frozen encoder's tokens alone, and the null prompt
is that encoder's embedding of "". With config.text.null_position=False (precomputed embeddings only; what an
imported UNet2DConditionModel uses) the context is the embeddings alone, and a prompt with no valid position (the
null prompt, as conditioning.drop makes it) reads a learned `null_prompt` [max_length, D] in their place.
"""

import jax.numpy as jnp
from flax import nnx

from conprediff_jax import conditioning
from conprediff_jax.models import attention

_embedding_init = nnx.initializers.normal(0.02)
ENCODERS = ("bytes", "precomputed")  # config.text.encoder


def context_dim(encoder: str, width: int, embedding_dim: int) -> int:
  """The width of the context vectors the UNet cross-attends to: the byte encoder's, or the stored embeddings'."""
  return width if encoder == "bytes" else embedding_dim


class TextEncoder(nnx.Module):
  """`(cond, batch) -> (context float [B, 1 + L, dim], mask bool [B, 1 + L])`; a cond without text (None, or
  no text keys) reads as the null prompt."""

  def __init__(self, *, encoder: str, max_length: int, width: int, depth: int, num_heads: int,
               embedding_dim: int, null_position: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    if encoder not in ENCODERS:
      raise ValueError(f"config.text.encoder must be one of {ENCODERS}, got {encoder!r}")
    self.encoder, self.max_length, self.dtype = encoder, max_length, dtype
    self.null_position = null_position
    self.dim = context_dim(encoder, width, embedding_dim)
    if encoder == "bytes":
      self.token_embedding = nnx.Embed(conditioning.TEXT_VOCAB, width, dtype=dtype, embedding_init=_embedding_init,
                                       rngs=rngs)
      self.position_embedding = nnx.Param(_embedding_init(rngs.params(), (1 + max_length, width)))
      self.blocks = nnx.List([attention.Block(width, heads=num_heads, mlp_ratio=4, dropout=0.0, rngs=rngs,
                                              dtype=dtype) for _ in range(depth)])
      self.norm_out = nnx.LayerNorm(width, epsilon=attention.LN_EPS, dtype=dtype, rngs=rngs)
    elif null_position:
      self.null_embedding = nnx.Param(_embedding_init(rngs.params(), (1, embedding_dim)))
    else:
      self.null_prompt = nnx.Param(jnp.zeros((max_length, embedding_dim), jnp.float32))

  def __call__(self, cond: dict | None, batch: int):
    cond = cond or {}
    if self.encoder == "bytes":
      tokens = self._fit(cond.get("text_tokens", jnp.zeros((batch, 0), jnp.int32)), conditioning.PAD)
      ids = jnp.concatenate([jnp.full((batch, 1), conditioning.BOS, jnp.int32), tokens], axis=1)
      mask = ids != conditioning.PAD
      x = self.token_embedding(ids) + self.position_embedding[...][:ids.shape[1]].astype(self.dtype)
      for block in self.blocks:
        x = block(x, key_mask=mask)
      return self.norm_out(x), mask
    embedding = self._fit(cond.get("text_embedding", jnp.zeros((batch, 0, self.dim), jnp.float32)), 0.0)
    mask = self._fit(cond.get("text_mask", jnp.zeros((batch, 0), bool)), False)
    if embedding.shape[-1] != self.dim:
      raise ValueError(f"the text embeddings are {embedding.shape[-1]} wide but config.text.embedding_dim="
                       f"{self.dim}; set it to the width of the stored embeddings")
    if not self.null_position:  # the null prompt, where a row has no valid position: the learned null_prompt
      empty = ~jnp.any(mask.astype(bool), axis=1)
      context = jnp.where(empty[:, None, None], self.null_prompt[...][None], embedding)
      return context.astype(self.dtype), mask.astype(bool) | empty[:, None]
    null = jnp.broadcast_to(self.null_embedding[...], (batch, 1, self.dim))
    return (jnp.concatenate([null, embedding], axis=1).astype(self.dtype),
            jnp.concatenate([jnp.ones((batch, 1), bool), mask.astype(bool)], axis=1))


  def _fit(self, x, fill):
    """`x` [B, L, ...] cut or padded with `fill` to max_length positions: data and prompts may come longer or
    shorter than the encoder's positions."""
    x = x[:, :self.max_length]
    pad = [(0, 0), (0, self.max_length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad, constant_values=fill)


def text_encoder_from_config(config, *, rngs: nnx.Rngs) -> TextEncoder | None:
  """The config's text encoder, or None for a model without text conditioning."""
  if not config.model.get("text_conditional", False):
    return None
  t = config.text
  return TextEncoder(encoder=t.encoder, max_length=t.max_length, width=t.width, depth=t.depth,
                     num_heads=t.num_heads, embedding_dim=t.embedding_dim,
                     null_position=t.get("null_position", True), dtype=jnp.dtype(config.model.dtype), rngs=rngs)
