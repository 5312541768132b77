"""The patch discriminator of pix2pix, as VQGAN and LDM train their autoencoders against it (taming-transformers'
NLayerDiscriminator): 4x4 convolutions, `layers` of them halving the image, one more at stride 1 and a last one to
a single logit per patch, LeakyReLU(0.2) between, and batch normalisation after every convolution but the first
and the last. NHWC.

Training-only: the first stages' loss reads it (families/adversarial.py); it is never averaged, sampled or
exported. Its normalisation uses the statistics of the batch it is called on, as a BatchNorm in training mode does,
and keeps no running averages, since the discriminator never runs in inference mode.
"""

import jax.numpy as jnp
from flax import nnx

BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm2d's
WIDTH_CAP = 8          # widths double per layer up to 8x `channels`
INIT = nnx.initializers.normal(0.02)  # pix2pix's weights_init for its convolutions


class BatchStatNorm(nnx.Module):
  """Per-channel normalisation by the statistics of the batch (over batch, height and width), scale and shift."""

  def __init__(self, channels: int, *, dtype=jnp.float32):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
    return ((x32 - mean) * jnp.reciprocal(jnp.sqrt(var + BATCH_NORM_EPS)) * self.scale[...] + self.bias[...]
            ).astype(self.dtype)


def output_size(image_size: int, layers: int) -> int:
  """The side of the logit map: `layers` halvings of a 4x4, padding-1 conv, then two at stride 1 (each -1)."""
  size = image_size
  for _ in range(layers):
    size = (size + 2 - 4) // 2 + 1
  return size - 2


class PatchDiscriminator(nnx.Module):
  """`D(images) -> logits [B, h, w, 1]`, one per patch (a 70x70 receptive field with `layers=3`)."""

  def __init__(self, *, image_channels: int, channels: int = 64, layers: int = 3, dtype=jnp.float32,
               rngs: nnx.Rngs):
    conv = lambda cin, cout, stride, bias: nnx.Conv(cin, cout, (4, 4), strides=stride, padding=((1, 1), (1, 1)),
                                                    use_bias=bias, kernel_init=INIT, dtype=dtype, rngs=rngs)
    widths = [channels * min(2**i, WIDTH_CAP) for i in range(layers + 1)]
    self.convs = nnx.List([conv(image_channels, widths[0], 2, True)] +
                          [conv(widths[i - 1], widths[i], 2 if i < layers else 1, False) for i in range(1, layers + 1)])
    self.norms = nnx.List([BatchStatNorm(w, dtype=dtype) for w in widths[1:]])
    self.out = conv(widths[-1], 1, 1, True)

  def __call__(self, images):
    h = nnx.leaky_relu(self.convs[0](images), 0.2)
    for conv, norm in zip(self.convs[1:], self.norms):
      h = nnx.leaky_relu(norm(conv(h)), 0.2)
    return self.out(h).astype(jnp.float32)
