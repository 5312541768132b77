"""A bidirectional transformer over a grid of discrete tokens: the network of the masked-token family.

Tokens are ids in [0, vocab_size]; id `vocab_size` is the absorbing [MASK] token, so the input embedding has one more
row than the output head has classes (the model never predicts [MASK]). Layout is [B, h, w] in, NHWC out.

`__call__` returns `(logits, features)`: `features` are the token features after the final LayerNorm, the
per-position representation that a training-only context head may read.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax.models import layers

LN_EPS = 1e-6
_embedding_init = nnx.initializers.normal(0.02)


def _linear(cin, cout, rngs, dtype):
  return nnx.Linear(cin, cout, dtype=dtype, rngs=rngs)


class SelfAttention(nnx.Module):
  """Multi-head self-attention with no mask: every token attends to every token."""

  def __init__(self, width: int, *, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
    if width % heads:
      raise ValueError(f"transformer width {width} not divisible by num_heads {heads}")
    self.heads = heads
    self.qkv = _linear(width, 3 * width, rngs, dtype)
    self.out = _linear(width, width, rngs, dtype)

  def __call__(self, x):
    b, n, c = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3 * self.heads, c // self.heads), 3, axis=2)
    return self.out(jax.nn.dot_product_attention(q, k, v).reshape(b, n, c))


class Block(nnx.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)), with residual-branch dropout."""

  def __init__(self, width: int, *, heads: int, mlp_ratio: int, dropout: float, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm1 = nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.attn = SelfAttention(width, heads=heads, rngs=rngs, dtype=dtype)
    self.norm2 = nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.mlp_in = _linear(width, mlp_ratio * width, rngs, dtype)
    self.mlp_out = _linear(mlp_ratio * width, width, rngs, dtype)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, rngs=None):
    # Dropout runs only when the caller hands an rng, i.e. at train time; sampling passes none.
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    x = x + drop(self.attn(self.norm1(x)))
    return x + drop(self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x)))))


class MaskedTokenTransformer(nnx.Module):
  """`(tokens [B,h,w] int, labels [B] | None) -> (logits [B,h,w,vocab_size] float32, features [B,h,w,width])`."""

  def __init__(self, *, vocab_size: int, grid: int, width: int, depth: int, num_heads: int, mlp_ratio: int = 4,
               num_classes: int = 0, dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
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
    self.embedding_dropout = nnx.Dropout(dropout)
    self.blocks = nnx.List([Block(width, heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, rngs=rngs,
                                  dtype=dtype) for _ in range(depth)])
    self.norm_out = nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.head = _linear(width, vocab_size, rngs, dtype)
    self.dtype = dtype

  def __call__(self, tokens, labels=None, *, rngs: nnx.Rngs | None = None):
    """`rngs` (with a `dropout` stream) turns dropout on; without it the network is deterministic."""
    b, h, w = tokens.shape
    if h > self.grid or w > self.grid:
      raise ValueError(f"token grid {h}x{w} larger than the position tables' {self.grid}")
    position = self.row_embedding[...][:h, None, :] + self.col_embedding[...][None, :w, :]
    x = (self.token_embedding(tokens) + position.astype(self.dtype)).reshape(b, h * w, -1)
    if self.class_embedding is not None:
      # The class is one extra token every position attends to; it has no grid position and no output.
      label = self.class_embedding(layers.class_ids(labels, self.class_embedding.num_embeddings, b))
      x = jnp.concatenate([label[:, None, :].astype(x.dtype), x], axis=1)
    x = self.embedding_dropout(x, deterministic=rngs is None, rngs=rngs)
    for block in self.blocks:
      x = block(x, rngs)
    features = self.norm_out(x[:, x.shape[1] - h * w:]).reshape(b, h, w, -1)
    return self.head(features).astype(jnp.float32), features


def transformer_from_config(config, *, vocab_size: int, grid: int, rngs: nnx.Rngs) -> MaskedTokenTransformer:
  m, d = config.model, config.data
  return MaskedTokenTransformer(vocab_size=vocab_size, grid=grid, width=m.width, depth=m.depth,
                                num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                                num_classes=d.num_classes if m.class_conditional else 0,
                                dtype=jnp.dtype(m.dtype), rngs=rngs)
