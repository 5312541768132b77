"""A diffusion transformer (DiT, Peebles & Xie 2023) whose modules follow diffusers' `DiTTransformer2DModel`.

Patchify (a p x p stride-p convolution), fixed 2-D sin-cos positions, `depth` adaLN-Zero blocks (self-attention and
a GELU MLP, each gated by a scale the timestep and class regress, zero at initialisation), an adaptive final norm
and a linear layer to p x p x C per token, unpatchified. Names as diffusers' (pos_embed.proj,
transformer_blocks.{i}.{norm1.linear, attn1.to_q, ..., ff.net.0.proj, ff.net.2}, proj_out_1, proj_out_2), except
that the timestep and class embedders are held once (`emb`, as the DiT paper's network) where diffusers keeps a
copy in every block's norm1: the exporter writes the copies, the importer checks they agree (export/diffusers_dit.py).

A text-conditional DiT (config.model.text_conditional) adds cross-attention to the prompt after the
self-attention of every block (`norm2`, `attn2`, as PixArt-alpha's); a mask-conditioned one reads the known
pixels and the mask as extra input channels of the patch embedding, as the UNet does.

`__call__(x, t, cond)` returns `(output, features)`: `features` [B, H/p, W/p, width] are the last block's tokens
on the patch grid, the per-position representation a training-only context head reads.
"""

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from conprediff_jax.models import cross_attention, layers
from conprediff_jax.models.attention import attend
from conprediff_jax.models.text_encoder import text_encoder_from_config
from conprediff_jax.models.unet import TimestepEmbedding, timestep_embedding

# (width, depth, heads) of the DiT paper's sizes (Table 1); the patch is the config's (2, 4 or 8).
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
FREQUENCY_DIM = 256  # the sinusoidal timestep features the embedder reads
NORM_EPS = 1e-6      # every LayerNorm (no affine parameters: adaLN supplies scale and shift)

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_embedding_init = nnx.initializers.normal(0.02)


@functools.cache
def sincos_positions(width: int, grid: int) -> np.ndarray:
  """float32 [grid * grid, width]: MAE's and DiT's fixed 2-D positions, row-major over the grid. The first half
  encodes the column, the second the row, each as [sin, cos] at frequencies 1 / 10000^(k / (width / 4))."""
  quarter = width // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
  encode = lambda pos: np.concatenate([np.sin(pos.reshape(-1, 1) * omega), np.cos(pos.reshape(-1, 1) * omega)], 1)
  return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def _linear(cin, cout, rngs, dtype, init=_xavier):
  return nnx.Linear(cin, cout, kernel_init=init, bias_init=_zeros, dtype=dtype, rngs=rngs)


def _layer_norm(width, rngs, dtype):
  return nnx.LayerNorm(width, epsilon=NORM_EPS, use_scale=False, use_bias=False, dtype=dtype, rngs=rngs)


def _modulate(x, shift, scale):
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


class PatchEmbed(nnx.Module):
  """`x [B, H, W, C] -> tokens [B, (H/p)(W/p), width]`: a stride-p convolution plus the fixed positions."""

  def __init__(self, cin: int, width: int, patch: int, grid: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    # Initialised as the DiT paper's: a linear layer over the flattened patch (Xavier on [p*p*C, width]).
    init = lambda key, shape, dtype=jnp.float32: _xavier(key, (patch * patch * cin, width), dtype).reshape(shape)
    self.proj = nnx.Conv(cin, width, (patch, patch), strides=patch, padding="VALID", kernel_init=init,
                         bias_init=_zeros, dtype=dtype, rngs=rngs)
    self.width, self.grid = width, grid

  def __call__(self, x):
    tokens = self.proj(x)
    b, h, w, c = tokens.shape
    positions = sincos_positions(self.width, self.grid)  # fixed, not trained: a constant of the compiled program
    return tokens.reshape(b, h * w, c) + jnp.asarray(positions, tokens.dtype)


class Embedder(nnx.Module):
  """The conditioning vector every adaLN reads: the timestep's MLP embedding plus the class's (the last row of the
  class table is the null class of classifier-free guidance, as diffusers' LabelEmbedding)."""

  def __init__(self, width: int, num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.timestep_embedder = TimestepEmbedding(FREQUENCY_DIM, width, rngs=rngs, dtype=dtype)
    for linear in (self.timestep_embedder.linear_1, self.timestep_embedder.linear_2):
      linear.kernel[...] = _embedding_init(rngs.params(), linear.kernel.shape)
    self.class_embedder = (nnx.Embed(num_classes + 1, width, dtype=dtype, embedding_init=_embedding_init, rngs=rngs)
                           if num_classes else None)

  def __call__(self, t, labels):
    # diffusers' Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1), the DiT paper's frequencies.
    emb = self.timestep_embedder(timestep_embedding(t, FREQUENCY_DIM, shift=1))
    if self.class_embedder is not None:
      emb = emb + self.class_embedder(layers.class_ids(labels, self.class_embedder.num_embeddings, t.shape[0]))
    return emb


class SelfAttention(nnx.Module):
  """diffusers' `Attention` with biases: to_q, to_k, to_v, to_out.0."""

  def __init__(self, width: int, *, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
    self.heads = heads
    self.to_q, self.to_k, self.to_v = (_linear(width, width, rngs, dtype) for _ in range(3))
    self.to_out = nnx.List([_linear(width, width, rngs, dtype)])

  def __call__(self, x):
    return self.to_out[0](attend(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class AdaLayerNormZero(nnx.Module):
  """The six modulations of a block (shift, scale, gate for attention and for the MLP) regressed from the
  conditioning vector; zero at initialisation, so every block starts as the identity."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.linear = _linear(width, 6 * width, rngs, dtype, init=_zeros)

  def __call__(self, emb):
    return jnp.split(self.linear(nnx.silu(emb)), 6, axis=-1)


class GELU(nnx.Module):
  """diffusers' GELU(approximate="tanh"): a linear layer, `proj`, then the tanh GELU."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.proj = _linear(width, hidden, rngs, dtype)

  def __call__(self, x):
    return nnx.gelu(self.proj(x), approximate=True)


class MLP(nnx.Module):
  """diffusers' FeedForward: net.0 (GELU), net.2 (net.1 is its parameter-free dropout slot)."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.net = nnx.List([GELU(width, hidden, rngs=rngs, dtype=dtype), nnx.Dropout(0.0),
                         _linear(hidden, width, rngs, dtype)])

  def __call__(self, x):
    return self.net[2](self.net[0](x))


class DiTBlock(nnx.Module):
  """x + gate_msa * attn(modulate(LN(x))) [+ cross-attention to the prompt] + gate_mlp * mlp(modulate(LN(x)))."""

  def __init__(self, width: int, *, heads: int, mlp_ratio: int, context_dim: int | None, dropout: float,
               rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm1 = AdaLayerNormZero(width, rngs=rngs, dtype=dtype)
    self.norm = _layer_norm(width, rngs, dtype)
    self.attn1 = SelfAttention(width, heads=heads, rngs=rngs, dtype=dtype)
    if context_dim is not None:
      self.norm2 = _layer_norm(width, rngs, dtype)
      self.attn2 = cross_attention.CrossAttention(width, context_dim, heads=heads, rngs=rngs, dtype=dtype)
    else:
      self.norm2 = self.attn2 = None
    self.norm3 = _layer_norm(width, rngs, dtype)
    self.ff = MLP(width, mlp_ratio * width, rngs=rngs, dtype=dtype)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, emb, rngs=None, text=None):
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(emb)
    # Dropout runs only when the caller hands an rng, i.e. at train time; sampling passes none.
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    x = x + gate_msa[:, None, :] * drop(self.attn1(_modulate(self.norm(x), shift_msa, scale_msa)))
    if self.attn2 is not None:
      x = x + drop(self.attn2(self.norm2(x), *text))
    return x + gate_mlp[:, None, :] * drop(self.ff(_modulate(self.norm3(x), shift_mlp, scale_mlp)))


class DiT(nnx.Module):
  """`(x [B,H,W,C], t [B], cond | None) -> (out [B,H,W,C] float32, features [B,H/p,W/p,width])`."""

  def __init__(self, *, image_size: int, in_channels: int, patch_size: int, width: int, depth: int, num_heads: int,
               mlp_ratio: int = 4, dropout: float = 0.0, num_classes: int = 0, mask_conditional: bool = False,
               text_encoder: nnx.Module | None = None, remat: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f"patch size {patch_size} does not divide the {image_size}x{image_size} grid")
    if width % num_heads or width % 4:
      raise ValueError(f"DiT width {width} must divide into {num_heads} heads and into 4 (the 2-D positions)")
    self.patch, self.channels, self.remat = patch_size, in_channels, remat
    self.feature_dim = width
    self.mask_conditional = mask_conditional
    self.text_encoder = text_encoder
    cin = 2 * in_channels + 1 if mask_conditional else in_channels
    self.pos_embed = PatchEmbed(cin, width, patch_size, image_size // patch_size, rngs=rngs, dtype=dtype)
    self.emb = Embedder(width, num_classes, rngs=rngs, dtype=dtype)
    context_dim = None if text_encoder is None else text_encoder.dim
    self.transformer_blocks = nnx.List([
        DiTBlock(width, heads=num_heads, mlp_ratio=mlp_ratio, context_dim=context_dim, dropout=dropout, rngs=rngs,
                 dtype=dtype) for _ in range(depth)])
    self.norm_out = _layer_norm(width, rngs, dtype)
    self.proj_out_1 = _linear(width, 2 * width, rngs, dtype, init=_zeros)
    self.proj_out_2 = _linear(width, patch_size * patch_size * in_channels, rngs, dtype, init=_zeros)

  def __call__(self, x, t, cond: dict | None = None, rngs: nnx.Rngs | None = None):
    """`cond` keys the model does not read are ignored, missing ones read as null; `rngs` (with a `dropout`
    stream) turns dropout on, without it the network is deterministic."""
    cond = cond or {}
    b, size = x.shape[0], x.shape[1]
    if self.mask_conditional:  # missing keys: nothing known, the plain generation of a mask-conditioned model
      known = cond.get("known_mask", jnp.zeros(x.shape[:-1] + (1,), bool))
      pixels = cond.get("known_image", jnp.zeros_like(x))
      x = jnp.concatenate([x, jnp.where(known, pixels, 0.0).astype(x.dtype), known.astype(x.dtype)], axis=-1)
    emb = self.emb(t, cond.get("label"))
    text = None if self.text_encoder is None else self.text_encoder(cond, b)
    h = self.pos_embed(x)
    for block in self.transformer_blocks:
      h = layers.run_block(block, h, emb, rngs, text, remat=self.remat)
    grid = size // self.patch
    features = h.reshape(b, grid, grid, -1)
    shift, scale = jnp.split(self.proj_out_1(nnx.silu(emb)), 2, axis=-1)
    out = self.proj_out_2(_modulate(self.norm_out(h), shift, scale))
    p, c = self.patch, self.channels
    out = out.reshape(b, grid, grid, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, size, size, c)
    return out.astype(jnp.float32), features


def dit_from_config(config, *, rngs: nnx.Rngs) -> DiT:
  m, d = config.model, config.data
  return DiT(image_size=d.image_size, in_channels=d.channels, patch_size=m.patch_size, width=m.width,
             depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
             num_classes=d.num_classes if m.class_conditional else 0,
             mask_conditional=m.get("mask_conditional", False),
             text_encoder=text_encoder_from_config(config, rngs=rngs), remat=m.get("remat", False),
             dtype=jnp.dtype(m.dtype), rngs=rngs)


def feature_grid(config) -> tuple[int, int]:
  """(the patch grid's side, the token width): where the context head reads a DiT's features."""
  return config.data.image_size // config.model.patch_size, config.model.width

