"""The UNet's text path: diffusers' `Transformer2DModel` (self-attention, cross-attention to the prompt, GEGLU
feed-forward) with its module names (norm, proj_in, transformer_blocks.0.{norm1, attn1, norm2, attn2, norm3,
ff.net.0.proj, ff.net.2}, proj_out; to_q/to_k/to_v without bias, to_out.0 with), so that a text-conditional UNet
lays out its parameters as `UNet2DConditionModel` does (proj_in/proj_out as its use_linear_projection=True)."""

import jax.numpy as jnp
from flax import nnx

from conprediff_jax.models import attention, layers

GROUP_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm
LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms


class CrossAttention(nnx.Module):
  """diffusers' `Attention`: queries from x, keys and values from `context` (x itself when None)."""

  def __init__(self, dim: int, context_dim: int | None, *, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
    if dim % heads:
      raise ValueError(f"attention channels {dim} not divisible by num_heads {heads}")
    self.heads = heads
    kv_dim = context_dim or dim
    self.to_q = nnx.Linear(dim, dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_k = nnx.Linear(kv_dim, dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_v = nnx.Linear(kv_dim, dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_out = nnx.List([nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)])

  def __call__(self, x, context=None, key_mask=None):
    context = x if context is None else context
    return self.to_out[0](attention.attend(self.to_q(x), self.to_k(context), self.to_v(context), self.heads,
                                           key_mask))


class GEGLU(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.proj = nnx.Linear(dim, 2 * hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h, gate = jnp.split(self.proj(x), 2, axis=-1)
    return h * nnx.gelu(gate, approximate=False)


class FeedForward(nnx.Module):

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    # net.1 is diffusers' dropout slot: a parameter-free placeholder keeps net.2's name.
    self.net = nnx.List([GEGLU(dim, 4 * dim, rngs=rngs, dtype=dtype), nnx.Dropout(0.0),
                         nnx.Linear(4 * dim, dim, dtype=dtype, rngs=rngs)])

  def __call__(self, x):
    return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):

  def __init__(self, dim: int, context_dim: int, *, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
    norm = lambda: nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, dtype=dtype, rngs=rngs)
    self.norm1, self.attn1 = norm(), CrossAttention(dim, None, heads=heads, rngs=rngs, dtype=dtype)
    self.norm2, self.attn2 = norm(), CrossAttention(dim, context_dim, heads=heads, rngs=rngs, dtype=dtype)
    self.norm3, self.ff = norm(), FeedForward(dim, rngs=rngs, dtype=dtype)

  def __call__(self, x, context, key_mask):
    x = x + self.attn1(self.norm1(x))
    x = x + self.attn2(self.norm2(x), context, key_mask)
    return x + self.ff(self.norm3(x))


class Transformer2D(nnx.Module):
  """`(x [B, H, W, C], (context [B, M, D], mask [B, M])) -> x + the block's update`."""

  def __init__(self, channels: int, context_dim: int, *, heads: int, groups: int, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.norm = layers.group_norm(channels, groups, rngs, dtype, epsilon=GROUP_NORM_EPS)
    self.proj_in = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    self.transformer_blocks = nnx.List([BasicTransformerBlock(channels, context_dim, heads=heads, rngs=rngs,
                                                              dtype=dtype)])
    self.proj_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x, text):
    b, h, w, c = x.shape
    tokens = self.proj_in(self.norm(x).reshape(b, h * w, c))
    tokens = self.transformer_blocks[0](tokens, *text)
    return x + self.proj_out(tokens).reshape(b, h, w, c)
