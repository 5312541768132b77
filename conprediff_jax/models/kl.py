"""A KL autoencoder (the latent-diffusion first stage) whose modules and parameters follow diffusers'
`AutoencoderKL`: encoder.{conv_in, down_blocks.{i}.resnets.{j}, down_blocks.{i}.downsamplers.0.conv, mid_block,
conv_norm_out, conv_out}, quant_conv, post_quant_conv, decoder.{conv_in, mid_block, up_blocks.{i}.resnets.{j},
up_blocks.{i}.upsamplers.0.conv, conv_norm_out, conv_out}, so an exporter only transposes kernels. Layout NHWC.

The encoder gives the mean and log-variance of a diagonal Gaussian over latents [B, H/f, W/f, latent_channels]
(f = 2 ** (levels - 1)); the decoder maps a latent back to pixels. Diffusion runs on latents times a scaling
factor that gives them about unit variance (families/kl_autoencoder.py measures it).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from conprediff_jax.models import layers
from conprediff_jax.models.unet import Attention, ResnetBlock2D, Upsample2D

EPS = 1e-6  # the norm epsilon of diffusers' Encoder / Decoder (resnet_eps)
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp


class Downsample(nnx.Module):
  """diffusers' Downsample2D(padding=0) in the VAE: pad right and bottom by one, then a stride-2 3x3 conv."""

  def __init__(self, channels, *, rngs, dtype=jnp.float32):
    self.conv = nnx.Conv(channels, channels, (3, 3), strides=2, padding=((0, 1), (0, 1)), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(x)


class MidBlock(nnx.Module):
  """UNetMidBlock2D without a time embedding: resnet, one-head attention, resnet."""

  def __init__(self, channels, *, groups, rngs, dtype):
    block = lambda: ResnetBlock2D(channels, channels, None, groups=groups, dropout=0.0, rngs=rngs, dtype=dtype,
                                  epsilon=EPS)
    self.resnets = nnx.List([block(), block()])
    self.attentions = nnx.List([Attention(channels, heads=1, groups=groups, rngs=rngs, dtype=dtype, epsilon=EPS)])

  def __call__(self, x):
    return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class CoderBlock(nnx.Module):
  """DownEncoderBlock2D (with `downsample`) or UpDecoderBlock2D (with `upsample`): resnets, then the resampler."""

  def __init__(self, cin, cout, *, num_layers, groups, rngs, dtype, downsample=False, upsample=False):
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups=groups, dropout=0.0,
                                           rngs=rngs, dtype=dtype, epsilon=EPS) for i in range(num_layers)])
    self.downsamplers = nnx.List([Downsample(cout, rngs=rngs, dtype=dtype)]) if downsample else None
    self.upsamplers = nnx.List([Upsample2D(cout, rngs=rngs, dtype=dtype)]) if upsample else None

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x)
    return x


class Encoder(nnx.Module):
  """diffusers' VAE Encoder: 2 x latent_channels out (mean and log-variance), or `out_channels` (VQModel's)."""

  def __init__(self, *, in_channels, widths: Sequence[int], layers_per_block, latent_channels, groups, rngs, dtype,
               out_channels: int | None = None):
    self.conv_in = layers.conv(in_channels, widths[0], rngs, dtype)
    cins = [widths[0]] + list(widths[:-1])
    self.down_blocks = nnx.List([
        CoderBlock(cin, cout, num_layers=layers_per_block, groups=groups, rngs=rngs, dtype=dtype,
                   downsample=i < len(widths) - 1) for i, (cin, cout) in enumerate(zip(cins, widths))])
    self.mid_block = MidBlock(widths[-1], groups=groups, rngs=rngs, dtype=dtype)
    self.conv_norm_out = layers.group_norm(widths[-1], groups, rngs, dtype, epsilon=EPS)
    self.conv_out = layers.conv(widths[-1], out_channels or 2 * latent_channels, rngs, dtype)

  def __call__(self, x):
    h = self.conv_in(x)
    for block in self.down_blocks:
      h = block(h)
    return self.conv_out(nnx.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nnx.Module):

  def __init__(self, *, out_channels, widths: Sequence[int], layers_per_block, latent_channels, groups, rngs, dtype):
    reversed_widths = list(reversed(widths))
    self.conv_in = layers.conv(latent_channels, widths[-1], rngs, dtype)
    self.mid_block = MidBlock(widths[-1], groups=groups, rngs=rngs, dtype=dtype)
    cins = [reversed_widths[0]] + reversed_widths[:-1]
    self.up_blocks = nnx.List([
        CoderBlock(cin, cout, num_layers=layers_per_block + 1, groups=groups, rngs=rngs, dtype=dtype,
                   upsample=i < len(widths) - 1) for i, (cin, cout) in enumerate(zip(cins, reversed_widths))])
    self.conv_norm_out = layers.group_norm(widths[0], groups, rngs, dtype, epsilon=EPS)
    self.conv_out = layers.conv(widths[0], out_channels, rngs, dtype)

  def __call__(self, z, head_input: bool = False):
    """Images; with `head_input`, also what `conv_out`, the last layer, reads (the first stages' adaptive
    adversarial weight differentiates through that layer alone)."""
    h = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      h = block(h)
    a = nnx.silu(self.conv_norm_out(h))
    return (self.conv_out(a), a) if head_input else self.conv_out(a)


class AutoencoderKL(nnx.Module):
  """`encode(images) -> (mean, logvar)`, `decode(latents) -> images`, and `__call__` for training."""

  def __init__(self, *, image_channels: int, channels: int, channel_mults: Sequence[int], num_res_blocks: int,
               latent_channels: int, num_groups: int, dtype=jnp.float32, rngs: nnx.Rngs):
    widths = [channels * m for m in channel_mults]
    self.latent_channels = latent_channels
    self.downsample = 2 ** (len(widths) - 1)
    common = dict(widths=widths, layers_per_block=num_res_blocks, latent_channels=latent_channels, groups=num_groups,
                  rngs=rngs, dtype=dtype)
    self.encoder = Encoder(in_channels=image_channels, **common)
    self.decoder = Decoder(out_channels=image_channels, **common)
    self.quant_conv = layers.conv(2 * latent_channels, 2 * latent_channels, rngs, dtype, kernel=1)
    self.post_quant_conv = layers.conv(latent_channels, latent_channels, rngs, dtype, kernel=1)

  def encode(self, images):
    """The posterior's (mean, log-variance), float32 [B, H/f, W/f, latent_channels] each."""
    moments = self.quant_conv(self.encoder(images)).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, latents, head_input: bool = False):
    """Images; with `head_input`, (images, what the decoder's last layer reads)."""
    out = self.decoder(self.post_quant_conv(latents), head_input)
    return (out[0].astype(jnp.float32), out[1]) if head_input else out.astype(jnp.float32)

  def __call__(self, images, key: jax.Array | None = None, head_input: bool = False):
    """(reconstruction, kl): decoded from a posterior sample (its mean without `key`), and KL(q(z|x) || N(0, I))
    summed over a latent's entries, per example [B]; with `head_input`, also what the decoder's last layer read."""
    mean, logvar = self.encode(images)
    z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
    if head_input:
      reconstruction, a = self.decode(z, head_input=True)
      return reconstruction, kl, a
    return self.decode(z), kl


def kl_from_config(config, *, rngs: nnx.Rngs) -> AutoencoderKL:
  m, d = config.model, config.data
  return AutoencoderKL(image_channels=d.channels, channels=m.channels, channel_mults=tuple(m.channel_mults),
                       num_res_blocks=m.num_res_blocks, latent_channels=m.latent_channels, num_groups=m.num_groups,
                       dtype=jnp.dtype(m.dtype), rngs=rngs)
