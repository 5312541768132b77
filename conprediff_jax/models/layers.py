"""Layers the convolutional networks share (NHWC; `dtype` is the compute dtype, parameters stay float32)."""

from flax import nnx


def conv(cin: int, cout: int, rngs: nnx.Rngs, dtype, kernel: int = 3, stride: int = 1) -> nnx.Conv:
  """A 'same'-padded convolution (explicit padding, as PyTorch's, so exported weights behave identically)."""
  pad = kernel // 2
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                  dtype=dtype, rngs=rngs)


def group_norm(channels: int, groups: int, rngs: nnx.Rngs, dtype, *, epsilon: float) -> nnx.GroupNorm:
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=epsilon, dtype=dtype, rngs=rngs)
