"""A bidirectional transformer over a grid of discrete tokens: the network of the masked-token family.

Tokens are ids in [0, vocab_size]; id `vocab_size` is the absorbing [MASK] token, so the input embedding has one more
row than the output head has classes (the model never predicts [MASK]). Layout is [B, h, w] in, NHWC out.

Conditioning (conprediff_jax/conditioning.py) enters as extra tokens ahead of the grid that every position attends
to and that have no output: the class, and the prompt's context vectors (its text slot, `text_encoder`'s output
projected to the width, padding masked out).

`__call__` returns `(logits, features)`: `features` are the token features after the final LayerNorm, the
per-position representation that a training-only context head may read.
"""

import jax.numpy as jnp
from flax import nnx

from conprediff_jax.models import attention, layers
from conprediff_jax.models.text_encoder import text_encoder_from_config

LN_EPS = attention.LN_EPS
_embedding_init = nnx.initializers.normal(0.02)


class MaskedTokenTransformer(nnx.Module):
  """`(tokens [B,h,w] int, cond | None) -> (logits [B,h,w,vocab_size] float32, features [B,h,w,width])`."""

  def __init__(self, *, vocab_size: int, grid: int, width: int, depth: int, num_heads: int, mlp_ratio: int = 4,
               num_classes: int = 0, text_encoder: nnx.Module | None = None, dropout: float = 0.0,
               remat: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    self.remat = remat
    self.vocab_size = vocab_size
    self.mask_id = vocab_size  # the absorbing state: one row past the vocabulary
    self.grid = grid
    self.feature_dim = width
    self.token_embedding = nnx.Embed(vocab_size + 1, width, dtype=dtype, embedding_init=_embedding_init, rngs=rngs)
    # Factorised 2-D positions: row + column tables, 2 * grid * width parameters instead of grid^2 * width.
    self.row_embedding = nnx.Param(_embedding_init(rngs.params(), (grid, width)))
    self.col_embedding = nnx.Param(_embedding_init(rngs.params(), (grid, width)))
    # One extra row: the null class, so a conditional model can also be run (and trained) unconditionally.
    self.class_embedding = (nnx.Embed(num_classes + 1, width, dtype=dtype, embedding_init=_embedding_init, rngs=rngs)
                            if num_classes else None)
    self.text_encoder = text_encoder
    self.text_projection = None if text_encoder is None else _linear(text_encoder.dim, width, rngs, dtype)
    self.embedding_dropout = nnx.Dropout(dropout)
    self.blocks = nnx.List([attention.Block(width, heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                                            rngs=rngs, dtype=dtype) for _ in range(depth)])
    self.norm_out = nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.head = _linear(width, vocab_size, rngs, dtype)
    self.dtype = dtype

  def __call__(self, tokens, cond: dict | None = None, *, rngs: nnx.Rngs | None = None):
    """`cond` keys the model does not read are ignored, missing ones read as null; `rngs` (with a `dropout`
    stream) turns dropout on, without it the network is deterministic."""
    cond = cond or {}
    b, h, w = tokens.shape
    if h > self.grid or w > self.grid:
      raise ValueError(f"token grid {h}x{w} larger than the position tables' {self.grid}")
    position = self.row_embedding[...][:h, None, :] + self.col_embedding[...][None, :w, :]
    x = (self.token_embedding(tokens) + position.astype(self.dtype)).reshape(b, h * w, -1)
    prefix, valid = [], []  # the condition's tokens, and which of them may be attended to
    if self.class_embedding is not None:
      label = self.class_embedding(layers.class_ids(cond.get("label"), self.class_embedding.num_embeddings, b))
      prefix.append(label[:, None, :].astype(x.dtype))
      valid.append(jnp.ones((b, 1), bool))
    if self.text_encoder is not None:
      context, mask = self.text_encoder(cond, b)
      prefix.append(self.text_projection(context))
      valid.append(mask)
    # Only a prompt's padding is ever masked out.
    key_mask = None if self.text_encoder is None else jnp.concatenate(valid + [jnp.ones((b, h * w), bool)], 1)
    x = self.embedding_dropout(jnp.concatenate(prefix + [x], 1), deterministic=rngs is None, rngs=rngs)
    for block in self.blocks:
      x = layers.run_block(block, x, rngs, key_mask, remat=self.remat)
    features = self.norm_out(x[:, x.shape[1] - h * w:]).reshape(b, h, w, -1)
    return self.head(features).astype(jnp.float32), features


def _linear(cin, cout, rngs, dtype):
  return nnx.Linear(cin, cout, dtype=dtype, rngs=rngs)


def transformer_from_config(config, *, vocab_size: int, grid: int, rngs: nnx.Rngs) -> MaskedTokenTransformer:
  m, d = config.model, config.data
  return MaskedTokenTransformer(vocab_size=vocab_size, grid=grid, width=m.width, depth=m.depth,
                                num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                                num_classes=d.num_classes if m.class_conditional else 0,
                                text_encoder=text_encoder_from_config(config, rngs=rngs),
                                remat=m.get("remat", False), dtype=jnp.dtype(m.dtype), rngs=rngs)
