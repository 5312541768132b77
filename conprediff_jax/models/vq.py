"""A convolutional VQ-VAE tokenizer: encoder, EMA vector-quantised codebook, decoder (networks only; its loss
is conprediff_jax/families/autoencoder.py's). Layout is NHWC.

The codebook follows VQ-VAE-2 / Sonnet's `VectorQuantizerEMA`: codes are not trained by gradients but set to
running averages of the encoder outputs assigned to them, so there is no codebook loss, only the commitment term.
The codebook and its statistics are `nnx.BatchStat` variables that `quantize(train=True)` updates in place; the
trainer carries them next to the parameters (`nnx.state(model, nnx.BatchStat)`).

Dead codes: `ema_usage[k]` is a running average of the fraction of a batch's positions assigned to code k
(uniform use is 1 / K). A code is dead when `ema_usage * K < dead_code_threshold`, i.e. it is used at less than
that fraction of the uniform rate; a dead code is restarted at a random encoder output of the current batch, drawn
with probability proportional to its squared distance from its nearest code (as k-means++ seeds): outputs the
codebook already serves well, e.g. the many identical encodings of a blank background, are not drawn again.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conprediff_jax.models import kl, layers

NORM_EPS = 1e-6  # taming-transformers' VQGAN GroupNorm epsilon
LAPLACE_EPS = 1e-5  # Sonnet VectorQuantizerEMA's smoothing of the cluster sizes, so no code divides by zero


_conv = layers.conv


def _norm(channels, groups, rngs, dtype):
  return layers.group_norm(channels, groups, rngs, dtype, epsilon=NORM_EPS)


class ResBlock(nnx.Module):
  """GroupNorm, SiLU, conv, twice, plus a (1x1-projected where widths differ) shortcut."""

  def __init__(self, cin: int, cout: int, *, groups: int, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm1 = _norm(cin, groups, rngs, dtype)
    self.conv1 = _conv(cin, cout, rngs, dtype)
    self.norm2 = _norm(cout, groups, rngs, dtype)
    self.conv2 = _conv(cout, cout, rngs, dtype)
    self.shortcut = _conv(cin, cout, rngs, dtype, kernel=1) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = self.conv2(nnx.silu(self.norm2(h)))
    return (x if self.shortcut is None else self.shortcut(x)) + h


class Upsample(nnx.Module):

  def __init__(self, channels, *, rngs, dtype=jnp.float32):
    self.conv = _conv(channels, channels, rngs, dtype)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))  # nearest neighbour, then a conv


class Encoder(nnx.Module):
  """images [B,H,W,C] -> z_e [B,H/2^(L-1),W/2^(L-1),code_dim], one stride-2 conv between each of the L levels."""

  def __init__(self, *, image_channels, widths: Sequence[int], num_res_blocks, code_dim, groups, rngs, dtype):
    self.conv_in = _conv(image_channels, widths[0], rngs, dtype)
    blocks, downsamplers, cin = [], [], widths[0]
    for level, cout in enumerate(widths):
      blocks.append(nnx.List([ResBlock(cin if i == 0 else cout, cout, groups=groups, rngs=rngs, dtype=dtype)
                              for i in range(num_res_blocks)]))
      if level < len(widths) - 1:
        downsamplers.append(_conv(cout, cout, rngs, dtype, stride=2))
      cin = cout
    self.blocks = nnx.List(blocks)
    self.downsamplers = nnx.List(downsamplers)
    self.norm_out = _norm(widths[-1], groups, rngs, dtype)
    self.conv_out = _conv(widths[-1], code_dim, rngs, dtype, kernel=1)

  def __call__(self, x):
    h = self.conv_in(x)
    for level, blocks in enumerate(self.blocks):
      for block in blocks:
        h = block(h)
      if level < len(self.downsamplers):
        h = self.downsamplers[level](h)
    return self.conv_out(nnx.silu(self.norm_out(h)))


class Decoder(nnx.Module):
  """The encoder mirrored: z_q [B,h,w,code_dim] -> images, nearest upsampling + conv between levels."""

  def __init__(self, *, image_channels, widths: Sequence[int], num_res_blocks, code_dim, groups, rngs, dtype):
    widths = list(reversed(widths))
    self.conv_in = _conv(code_dim, widths[0], rngs, dtype)
    blocks, upsamplers, cin = [], [], widths[0]
    for level, cout in enumerate(widths):
      blocks.append(nnx.List([ResBlock(cin if i == 0 else cout, cout, groups=groups, rngs=rngs, dtype=dtype)
                              for i in range(num_res_blocks)]))
      if level < len(widths) - 1:
        upsamplers.append(Upsample(cout, rngs=rngs, dtype=dtype))
      cin = cout
    self.blocks = nnx.List(blocks)
    self.upsamplers = nnx.List(upsamplers)
    self.norm_out = _norm(widths[-1], groups, rngs, dtype)
    self.conv_out = _conv(widths[-1], image_channels, rngs, dtype)

  def __call__(self, x, head_input: bool = False):
    """Images; with `head_input`, also what `conv_out`, the last layer, reads (the first stages' adaptive
    adversarial weight differentiates through that layer alone)."""
    h = self.conv_in(x)
    for level, blocks in enumerate(self.blocks):
      for block in blocks:
        h = block(h)
      if level < len(self.upsamplers):
        h = self.upsamplers[level](h)
    a = nnx.silu(self.norm_out(h))
    return (self.conv_out(a), a) if head_input else self.conv_out(a)


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest code (squared Euclidean distance, float32) for each row of z [N, D]; int32 [N]."""
  z, codebook = z.astype(jnp.float32), codebook.astype(jnp.float32)
  # HIGHEST: TPUs/GPUs would otherwise multiply in bf16/tf32 and flip near-ties.
  cross = jnp.dot(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
  distances = jnp.sum(z**2, -1, keepdims=True) - 2 * cross + jnp.sum(codebook**2, -1)[None, :]
  return jnp.argmin(distances, axis=-1).astype(jnp.int32)


LAYOUTS = ("vqvae", "diffusers")  # config.model.layout


class VQVAE(nnx.Module):
  """Convolutional VQ-VAE: `images [B,H,W,C] -> (reconstruction, tokens [B,H/d,W/d], aux)`, d = `downsample`.

  `layout="diffusers"` builds diffusers' `VQModel` instead of the encoder and decoder above, module for module:
  its VAE Encoder (down blocks, a mid block with attention) to code_dim channels, quant_conv, the codebook,
  post_quant_conv and its Decoder (models/kl.py's), so that a VQModel's weights come in and go out by renaming
  (export/diffusers_export.py); the codebook and its EMA statistics are the same."""

  def __init__(self, *, image_channels: int, channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
               codebook_size: int, code_dim: int, num_groups: int = 8, commitment_cost: float = 0.25,
               codebook_decay: float = 0.99, dead_code_threshold: float = 0.03, layout: str = "vqvae",
               dtype=jnp.float32, rngs: nnx.Rngs):
    widths = [channels * m for m in channel_mults]
    common = dict(image_channels=image_channels, widths=widths, num_res_blocks=num_res_blocks, code_dim=code_dim,
                  groups=num_groups, rngs=rngs, dtype=dtype)
    if layout not in LAYOUTS:
      raise ValueError(f"config.model.layout must be one of {LAYOUTS}, got {layout!r}")
    self.layout = layout
    self.num_levels = len(channel_mults)
    self.codebook_size = codebook_size
    self.code_dim = code_dim
    self.commitment_cost = commitment_cost
    self.codebook_decay = codebook_decay
    self.dead_code_threshold = dead_code_threshold
    if layout == "vqvae":
      self.encoder, self.decoder = Encoder(**common), Decoder(**common)
      self.quant_conv = self.post_quant_conv = None
    else:
      coder = dict(widths=widths, layers_per_block=num_res_blocks, latent_channels=code_dim, groups=num_groups,
                   rngs=rngs, dtype=dtype)
      self.encoder = kl.Encoder(in_channels=image_channels, out_channels=code_dim, **coder)
      self.decoder = kl.Decoder(out_channels=image_channels, **coder)
      self.quant_conv = _conv(code_dim, code_dim, rngs, dtype, kernel=1)
      self.post_quant_conv = _conv(code_dim, code_dim, rngs, dtype, kernel=1)

    codebook = jax.random.normal(rngs.params(), (codebook_size, code_dim), jnp.float32)
    self.codebook = nnx.BatchStat(codebook)
    # One pseudo-observation per code, so that codebook == embed_sum / cluster_size holds from the start and the
    # first EMA steps do not divide a decayed initial vector by a near-zero count.
    self.ema_cluster_size = nnx.BatchStat(jnp.ones((codebook_size,), jnp.float32))
    self.ema_embed_sum = nnx.BatchStat(codebook)
    self.ema_usage = nnx.BatchStat(jnp.full((codebook_size,), 1.0 / codebook_size, jnp.float32))  # uniform: alive

  @property
  def downsample(self) -> int:
    return 2 ** (self.num_levels - 1)

  def encode(self, images):
    z_e = self.encoder(images)
    return (z_e if self.quant_conv is None else self.quant_conv(z_e)).astype(jnp.float32)

  def decode(self, z_q, head_input: bool = False):
    """Images; with `head_input`, (images, what the decoder's last layer reads)."""
    out = self.decoder(z_q if self.post_quant_conv is None else self.post_quant_conv(z_q), head_input)
    return (out[0].astype(jnp.float32), out[1]) if head_input else out.astype(jnp.float32)

  def embed(self, tokens):
    return jnp.take(self.codebook[...], tokens, axis=0)

  def decode_tokens(self, tokens):
    return self.decode(self.embed(tokens))

  def tokenize(self, images):
    z_e = self.encode(images)
    return nearest_codes(z_e.reshape(-1, self.code_dim), self.codebook[...]).reshape(z_e.shape[:-1])

  def quantize(self, z_e, *, train: bool = False, key: jax.Array | None = None):
    """z_e [..., D] -> (z_q straight-through, tokens int32 [...], aux float32 scalars).

    With `train`, the codebook statistics are updated from this batch and dead codes restarted (which needs `key`);
    z_q and the commitment are taken against the codebook as it was before the update.
    """
    z_e = z_e.astype(jnp.float32)
    flat = z_e.reshape(-1, self.code_dim)
    codebook = self.codebook[...]
    tokens = nearest_codes(flat, codebook)
    q = jnp.take(codebook, tokens, axis=0).reshape(z_e.shape)
    counts = jnp.bincount(tokens, length=self.codebook_size).astype(jnp.float32)
    if train:
      if key is None:
        raise ValueError("VQVAE.quantize(train=True) needs a key to restart dead codes")
      self._update_codebook(jax.lax.stop_gradient(flat), jax.lax.stop_gradient(q.reshape(flat.shape)), tokens,
                            counts, key)

    commitment = jnp.mean((z_e - jax.lax.stop_gradient(q))**2)
    probs = counts / flat.shape[0]
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    aux = {"commitment": commitment, "loss_commitment": self.commitment_cost * commitment,
           "perplexity": jnp.exp(entropy), "usage": jnp.mean((counts > 0).astype(jnp.float32))}
    z_q = z_e + jax.lax.stop_gradient(q - z_e)
    return z_q, tokens.reshape(z_e.shape[:-1]), aux

  def _update_codebook(self, flat, q, tokens, counts, key):
    """One EMA step with Laplace smoothing, then dead-code restart; fixed shapes, no branching on values."""
    k, decay = self.codebook_size, self.codebook_decay
    cluster_size = decay * self.ema_cluster_size[...] + (1 - decay) * counts
    embed_sum = decay * self.ema_embed_sum[...] + (1 - decay) * jax.ops.segment_sum(flat, tokens, k)
    usage = decay * self.ema_usage[...] + (1 - decay) * counts / flat.shape[0]
    total = jnp.sum(cluster_size)
    smoothed = (cluster_size + LAPLACE_EPS) / (total + k * LAPLACE_EPS) * total
    codebook = embed_sum / smoothed[:, None]

    # Restart dead codes at distinct batch positions (when the batch has at least K of them), with the statistics
    # of a fresh code: one pseudo-observation at the new vector and uniform usage, so it is not dead again at once.
    dead = usage * k < self.dead_code_threshold
    weight = jnp.sum((flat - q)**2, -1) + 1e-12  # the floor keeps a batch the codebook fits exactly drawable
    picks = jax.random.choice(key, flat.shape[0], (k,), replace=flat.shape[0] < k, p=weight / jnp.sum(weight))
    restart = flat[picks]
    self.codebook[...] = jnp.where(dead[:, None], restart, codebook)
    self.ema_cluster_size[...] = jnp.where(dead, 1.0, cluster_size)
    self.ema_embed_sum[...] = jnp.where(dead[:, None], restart, embed_sum)
    self.ema_usage[...] = jnp.where(dead, 1.0 / k, usage)

  def __call__(self, images, *, train: bool = False, key: jax.Array | None = None, head_input: bool = False):
    """(reconstruction, tokens, aux); with `head_input`, also what the decoder's last layer read."""
    z_q, tokens, aux = self.quantize(self.encode(images), train=train, key=key)
    if head_input:
      reconstruction, a = self.decode(z_q, head_input=True)
      return reconstruction, tokens, aux, a
    return self.decode(z_q), tokens, aux


def vq_from_config(config, *, rngs: nnx.Rngs) -> VQVAE:
  m, d = config.model, config.data
  return VQVAE(image_channels=d.channels, channels=m.channels, channel_mults=tuple(m.channel_mults),
               num_res_blocks=m.num_res_blocks, codebook_size=m.codebook_size, code_dim=m.code_dim,
               num_groups=m.num_groups, commitment_cost=m.commitment_cost, codebook_decay=m.codebook_decay,
               dead_code_threshold=m.dead_code_threshold, layout=m.get("layout", "vqvae"), dtype=jnp.dtype(m.dtype),
               rngs=rngs)


BUFFERS = ("codebook", "ema_cluster_size", "ema_embed_sum", "ema_usage")  # the codebook and its EMA statistics


def codebook_buffers(codebook) -> dict:
  """The VQ model's buffers for a codebook that comes without its EMA statistics (an imported VQModel's): each code
  one pseudo-observation at itself and uniform usage, as a fresh codebook starts."""
  k = codebook.shape[0]
  return {"codebook": codebook, "ema_embed_sum": codebook, "ema_cluster_size": np.ones((k,), np.float32),
          "ema_usage": np.full((k,), 1.0 / k, np.float32)}
