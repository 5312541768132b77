"""A Flax NNX UNet denoiser whose modules and parameters follow diffusers' `UNet2DModel`.

The names (conv_in, time_embedding.linear_1, down_blocks.{i}.resnets.{j}.conv1, mid_block.attentions.0.to_q,
up_blocks.{i}.upsamplers.0.conv, conv_norm_out, conv_out, ...) and the block layout (skip connections from conv_in,
every resnet and every downsampler; `num_res_blocks + 1` resnets per up block; up_blocks[0] at the lowest
resolution) match diffusers, so an exporter only transposes kernels. Layout is NHWC.

A text-conditional UNet (config.model.text_conditional) follows `UNet2DConditionModel` instead: every attention
is a `Transformer2D` (models/cross_attention.py) whose cross-attention reads the prompt from `text_encoder`.

`__call__(x, t, cond)` takes the conditioning dict (conprediff_jax/conditioning.py) and returns
`(output, features)`: `features` is the last up block's output before the output norm/conv, the per-position
representation that a training-only context head may read.
"""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax.models import attention, cross_attention, layers
from conprediff_jax.models.text_encoder import text_encoder_from_config

NORM_EPS = 1e-5  # diffusers UNet2DModel's norm_eps


def timestep_embedding(t: jax.Array, dim: int, shift: int = 0) -> jax.Array:
  """Sinusoidal embedding as diffusers' `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=shift)`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedding(nnx.Module):

  def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.linear_1 = nnx.Linear(in_dim, dim, dtype=dtype, rngs=rngs)
    self.linear_2 = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.linear_2(nnx.silu(self.linear_1(x)))


_conv = layers.conv


def _norm(channels, groups, rngs, dtype, epsilon=NORM_EPS):
  return layers.group_norm(channels, groups, rngs, dtype, epsilon=epsilon)


class ResnetBlock2D(nnx.Module):
  """diffusers' ResnetBlock2D; without `temb_dim` (an autoencoder's) it has no time embedding projection."""

  def __init__(self, cin: int, cout: int, temb_dim: int | None, *, groups: int, dropout: float, rngs: nnx.Rngs,
               dtype=jnp.float32, epsilon: float = NORM_EPS):
    self.norm1 = _norm(cin, groups, rngs, dtype, epsilon)
    self.conv1 = _conv(cin, cout, rngs, dtype)
    self.time_emb_proj = nnx.Linear(temb_dim, cout, dtype=dtype, rngs=rngs) if temb_dim else None
    self.norm2 = _norm(cout, groups, rngs, dtype, epsilon)
    self.dropout = nnx.Dropout(dropout)
    self.conv2 = _conv(cout, cout, rngs, dtype)
    self.conv_shortcut = _conv(cin, cout, rngs, dtype, kernel=1) if cin != cout else None

  def __call__(self, x, temb=None, rngs=None):
    h = self.conv1(nnx.silu(self.norm1(x)))
    if self.time_emb_proj is not None:
      h = h + self.time_emb_proj(nnx.silu(temb))[:, None, None, :]
    # Dropout runs only when the caller hands an rng, i.e. at train time; sampling passes none.
    h = self.conv2(self.dropout(nnx.silu(self.norm2(h)), deterministic=rngs is None, rngs=rngs))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return x + h


class Attention(nnx.Module):
  """Spatial self-attention with a residual connection, as diffusers' `Attention` in UNet2DModel."""

  def __init__(self, channels: int, *, heads: int, groups: int, rngs: nnx.Rngs, dtype=jnp.float32,
               epsilon: float = NORM_EPS):
    if channels % heads:
      raise ValueError(f"attention channels {channels} not divisible by num_heads {heads}")
    self.heads = heads
    self.group_norm = _norm(channels, groups, rngs, dtype, epsilon)
    self.to_q = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    self.to_k = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    self.to_v = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    self.to_out = nnx.List([nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)])

  def __call__(self, x, text=None):
    del text  # self-attention only: the UNet's attentions share one call signature
    b, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(b, h * w, c)
    out = attention.attend(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens), self.heads)
    return x + self.to_out[0](out).reshape(b, h, w, c)


class Downsample2D(nnx.Module):

  def __init__(self, channels, *, rngs, dtype=jnp.float32):
    self.conv = _conv(channels, channels, rngs, dtype, stride=2)

  def __call__(self, x):
    return self.conv(x)


class Upsample2D(nnx.Module):

  def __init__(self, channels, *, rngs, dtype=jnp.float32):
    self.conv = _conv(channels, channels, rngs, dtype)

  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest neighbour, as F.interpolate(scale_factor=2)
    return self.conv(x)


class DownBlock(nnx.Module):
  """DownBlock2D, or AttnDownBlock2D when `attention` is set."""

  def __init__(self, cin, cout, temb_dim, *, num_layers, attention, add_downsample, make_attention, groups,
               dropout, rngs, dtype=jnp.float32):
    self.resnets = nnx.List([
        ResnetBlock2D(cin if i == 0 else cout, cout, temb_dim, groups=groups, dropout=dropout, rngs=rngs, dtype=dtype)
        for i in range(num_layers)])
    self.attentions = nnx.List([make_attention(cout) for _ in range(num_layers)]) if attention else None
    self.downsamplers = nnx.List([Downsample2D(cout, rngs=rngs, dtype=dtype)]) if add_downsample else None

  def __call__(self, x, temb, rngs=None, text=None):
    skips = []
    for i, resnet in enumerate(self.resnets):
      x = resnet(x, temb, rngs)
      if self.attentions is not None:
        x = self.attentions[i](x, text)
      skips.append(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
      skips.append(x)
    return x, skips


class UpBlock(nnx.Module):
  """UpBlock2D, or AttnUpBlock2D when `attention` is set; each resnet consumes one skip connection."""

  def __init__(self, skip_channels: Sequence[int], cin, cout, temb_dim, *, attention, add_upsample,
               make_attention, groups, dropout, rngs, dtype=jnp.float32):
    ins = [cin] + [cout] * (len(skip_channels) - 1)
    self.resnets = nnx.List([
        ResnetBlock2D(c + s, cout, temb_dim, groups=groups, dropout=dropout, rngs=rngs, dtype=dtype)
        for c, s in zip(ins, skip_channels)])
    self.attentions = nnx.List([make_attention(cout) for _ in skip_channels]) if attention else None
    self.upsamplers = nnx.List([Upsample2D(cout, rngs=rngs, dtype=dtype)]) if add_upsample else None

  def __call__(self, x, skips, temb, rngs=None, text=None):
    """`skips`: this block's skip connections, one per resnet, in the order the down path made them (the last
    made is read first)."""
    for i, (resnet, skip) in enumerate(zip(self.resnets, reversed(skips))):
      x = resnet(jnp.concatenate([x, skip], axis=-1), temb, rngs)
      if self.attentions is not None:
        x = self.attentions[i](x, text)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x)
    return x


class MidBlock(nnx.Module):
  """UNetMidBlock2D (or UNetMidBlock2DCrossAttn): resnet, attention, resnet."""

  def __init__(self, channels, temb_dim, *, make_attention, groups, dropout, rngs, dtype=jnp.float32):
    block = lambda: ResnetBlock2D(channels, channels, temb_dim, groups=groups, dropout=dropout, rngs=rngs, dtype=dtype)
    self.resnets = nnx.List([block(), block()])
    self.attentions = nnx.List([make_attention(channels)])

  def __call__(self, x, temb, rngs=None, text=None):
    return self.resnets[1](self.attentions[0](self.resnets[0](x, temb, rngs), text), temb, rngs)


class UNet(nnx.Module):
  """UNet2DModel-shaped denoiser: `(x [B,H,W,C], t [B], cond | None) -> (out [B,H,W,C], features)`.

  `text_encoder` (None without text) turns the cond's prompt into the context every attention cross-attends to."""

  def __init__(self, *, image_size: int, in_channels: int, channels: int, channel_mults: Sequence[int],
               num_res_blocks: int, attention_resolutions: Sequence[int], num_heads: int, num_groups: int,
               dropout: float = 0.0, num_classes: int = 0, mask_conditional: bool = False,
               text_encoder: nnx.Module | None = None, remat: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    widths = [channels * m for m in channel_mults]
    self.remat = remat
    temb_dim = 4 * channels
    self.text_encoder = text_encoder
    if text_encoder is None:
      make_attention = lambda c: Attention(c, heads=num_heads, groups=num_groups, rngs=rngs, dtype=dtype)
    else:
      make_attention = lambda c: cross_attention.Transformer2D(c, text_encoder.dim, heads=num_heads,
                                                               groups=num_groups, rngs=rngs, dtype=dtype)
    common = dict(make_attention=make_attention, groups=num_groups, dropout=dropout, rngs=rngs, dtype=dtype)
    self.temb_in_dim = channels
    self.feature_dim = widths[0]

    self.mask_conditional = mask_conditional
    # A mask-conditioned UNet also reads the known pixels and the mask (inpainting/mask_conditioning.py).
    self.conv_in = _conv(2 * in_channels + 1 if mask_conditional else in_channels, widths[0], rngs, dtype)
    self.time_embedding = TimestepEmbedding(channels, temb_dim, rngs=rngs, dtype=dtype)
    # One extra row: the null class, so a conditional model can also be run (and trained) unconditionally.
    self.class_embedding = nnx.Embed(num_classes + 1, temb_dim, rngs=rngs) if num_classes else None

    down, skip_channels, resolution, cin = [], [widths[0]], image_size, widths[0]
    for level, cout in enumerate(widths):
      last = level == len(widths) - 1
      down.append(DownBlock(cin, cout, temb_dim, num_layers=num_res_blocks,
                            attention=resolution in attention_resolutions, add_downsample=not last, **common))
      skip_channels += [cout] * num_res_blocks + ([] if last else [cout])
      resolution, cin = (resolution if last else resolution // 2), cout
    self.down_blocks = nnx.List(down)
    self.mid_block = MidBlock(widths[-1], temb_dim, **common)

    up = []
    for level, cout in enumerate(reversed(widths)):
      last = level == len(widths) - 1
      skips = [skip_channels.pop() for _ in range(num_res_blocks + 1)]
      up.append(UpBlock(skips, cin, cout, temb_dim, attention=resolution in attention_resolutions,
                        add_upsample=not last, **common))
      resolution, cin = (resolution if last else resolution * 2), cout
    self.up_blocks = nnx.List(up)

    self.conv_norm_out = _norm(widths[0], num_groups, rngs, dtype)
    self.conv_out = _conv(widths[0], in_channels, rngs, dtype)

  def __call__(self, x, t, cond: dict | None = None, rngs: nnx.Rngs | None = None):
    """`cond` keys the model does not read are ignored, missing ones read as null; `rngs` (with a `dropout`
    stream) turns dropout on, without it the network is deterministic."""
    cond = cond or {}
    temb = self.time_embedding(timestep_embedding(t, self.temb_in_dim))
    if self.class_embedding is not None:
      labels = layers.class_ids(cond.get("label"), self.class_embedding.num_embeddings, x.shape[0])
      temb = temb + self.class_embedding(labels)
    text = None if self.text_encoder is None else self.text_encoder(cond, x.shape[0])
    if self.mask_conditional:  # missing keys: nothing known, the plain generation of a mask-conditioned UNet
      known = cond.get("known_mask", jnp.zeros(x.shape[:-1] + (1,), bool))
      pixels = cond.get("known_image", jnp.zeros_like(x))
      x = jnp.concatenate([x, jnp.where(known, pixels, 0.0).astype(x.dtype), known.astype(x.dtype)], axis=-1)
    h = self.conv_in(x)
    skips = [h]
    for block in self.down_blocks:
      h, block_skips = layers.run_block(block, h, temb, rngs, text, remat=self.remat)
      skips += block_skips
    h = layers.run_block(self.mid_block, h, temb, rngs, text, remat=self.remat)
    for block in self.up_blocks:
      n = len(block.resnets)
      h = layers.run_block(block, h, skips[-n:], temb, rngs, text, remat=self.remat)
      skips = skips[:-n]
    features = h
    out = self.conv_out(nnx.silu(self.conv_norm_out(h)))
    return out.astype(jnp.float32), features


def unet_from_config(config, *, rngs: nnx.Rngs) -> UNet:
  m, d = config.model, config.data
  return UNet(image_size=d.image_size, in_channels=d.channels, channels=m.channels,
              channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
              attention_resolutions=tuple(m.attention_resolutions), num_heads=m.num_heads,
              num_groups=m.num_groups, dropout=m.dropout,
              num_classes=d.num_classes if m.class_conditional else 0,
              mask_conditional=m.get("mask_conditional", False),
              text_encoder=text_encoder_from_config(config, rngs=rngs), remat=m.get("remat", False),
              dtype=jnp.dtype(m.dtype), rngs=rngs)


def feature_grid(config) -> tuple[int, int]:
  """(the image's side, the last up block's width): where the context head reads a UNet's features."""
  return config.data.image_size, config.model.channels * config.model.channel_mults[0]
