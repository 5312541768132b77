"""Multi-head attention and the pre-LN transformer block, shared by the token transformer and the text encoder."""

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-6


def attend(q, k, v, heads: int, key_mask=None):
  """Multi-head scaled dot-product attention: q [B, N, C], k and v [B, M, C] -> [B, N, C]; `key_mask` bool [B, M]
  (True = may be attended to), or None for all."""
  b, n, c = q.shape
  split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, c // heads)
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return jax.nn.dot_product_attention(split(q), split(k), split(v), mask=mask).reshape(b, n, c)


def _linear(cin, cout, rngs, dtype):
  return nnx.Linear(cin, cout, dtype=dtype, rngs=rngs)


class SelfAttention(nnx.Module):
  """Multi-head self-attention; every token attends to every token `key_mask` allows (all, by default)."""

  def __init__(self, width: int, *, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
    if width % heads:
      raise ValueError(f"transformer width {width} not divisible by num_heads {heads}")
    self.heads = heads
    self.qkv = _linear(width, 3 * width, rngs, dtype)
    self.out = _linear(width, width, rngs, dtype)

  def __call__(self, x, key_mask=None):
    q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
    return self.out(attend(q, k, v, self.heads, key_mask))


class Block(nnx.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)), with residual-branch dropout."""

  def __init__(self, width: int, *, heads: int, mlp_ratio: int, dropout: float, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm1 = nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.attn = SelfAttention(width, heads=heads, rngs=rngs, dtype=dtype)
    self.norm2 = nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.mlp_in = _linear(width, mlp_ratio * width, rngs, dtype)
    self.mlp_out = _linear(mlp_ratio * width, width, rngs, dtype)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, rngs=None, key_mask=None):
    # Dropout runs only when the caller hands an rng, i.e. at train time; sampling passes none.
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    x = x + drop(self.attn(self.norm1(x), key_mask))
    return x + drop(self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x)))))
