"""The FID Inception-v3 ("pt_inception-2015-12-05", as in pytorch-fid and the TF FID reference) in Flax NNX.

NHWC, inference only: each conv's BatchNorm (eps 1e-3) is folded into the conv kernel and a bias at load time.
The FID-specific blocks differ from torchvision's Inception-v3: average pools exclude padding
(count_include_pad=False) and the last block (Mixed_7c) max-pools its pool branch. Features are the 2048-d global
average pool before `fc`.

Weights come from a user-provided `.safetensors` file with the pytorch-fid tensor names (`Mixed_5b.branch1x1.conv.
weight`, `...bn.running_mean`, ...); make one from the published `.pth` with
`python -m conprediff_jax.evaluation.convert_fid_weights`. Nothing here unpickles or imports torch.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conprediff_jax.evaluation import fid
from conprediff_jax.evaluation.checksums import verify_sha256

BN_EPS = 1e-3
FEATURE_DIM = 2048
FID_IMAGE_SIZE = 299
MIN_IMAGE_SIZE = 75  # Smallest input that leaves Mixed_7a a non-empty output.

_Pair = int | tuple[int, int]


def _pair(v: _Pair) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# ------------------------------------------------------------------------------------------------ layers


class BasicConv2d(nnx.Module):
  """Conv + bias + ReLU, `kernel` [HWIO]. The FID Inception's convs (no bias) fold their inference BatchNorm into
  `kernel` and `bias`; LPIPS's VGG16 and AlexNet convs are this as they are."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: _Pair, stride: _Pair = 1,
               padding: _Pair = 0):
    kh, kw = _pair(kernel_size)
    self.stride = _pair(stride)
    self.padding = _pair(padding)
    # Zeros are placeholders: the loader builds the module under nnx.eval_shape and sets real values.
    self.kernel = nnx.Param(jnp.zeros((kh, kw, in_channels, out_channels), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, self.kernel[...], window_strides=self.stride, padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)  # FID needs reference-level numerics; TPUs default to bf16 passes.
    return jax.nn.relu(y + self.bias[...])


def max_pool(x: jax.Array, stride: int, padding: int = 0, window: int = 3) -> jax.Array:
  """torch's MaxPool2d(window, stride, padding) on NHWC (floor mode)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  # A Python -inf, not an array: JAX then recognises the max-pool and can differentiate it (LPIPS as a loss).
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pad)


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1 average that divides by the number of in-image pixels (count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  zero = jnp.array(0, x.dtype)
  total = jax.lax.reduce_window(x, zero, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = jax.lax.reduce_window(ones, zero, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


# ------------------------------------------------------------------------------------------------ blocks


class FIDInceptionA(nnx.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double-3x3 and pool branches."""

  def __init__(self, cin: int, pool_features: int):
    self.branch1x1 = BasicConv2d(cin, 64, 1)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a: stride-2 reduction 35 -> 17."""

  def __init__(self, cin: int):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, max_pool(x, 2)], axis=-1)


class FIDInceptionC(nnx.Module):
  """Mixed_6b..e: factorised 7x7 branches."""

  def __init__(self, cin: int, c7: int):
    self.branch1x1 = BasicConv2d(cin, 192, 1)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                 self.branch7x7dbl_5):
      bd = conv(bd)
    bp = self.branch_pool(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a: stride-2 reduction 17 -> 8."""

  def __init__(self, cin: int):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = conv(b7)
    return jnp.concatenate([b3, b7, max_pool(x, 2)], axis=-1)


class FIDInceptionE(nnx.Module):
  """Mixed_7b (pool="avg", padding excluded) and Mixed_7c (pool="max", the FID network's quirk)."""

  def __init__(self, cin: int, pool: str):
    if pool not in ("avg", "max"):
      raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.branch1x1(x)
    h = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(h), self.branch3x3_2b(h)], axis=-1)
    h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], axis=-1)
    pooled = _avg_pool_exclude_pad(x) if self.pool == "avg" else max_pool(x, 1, padding=1)
    return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
  """Images [N, H, W, 3] in [-1, 1] (H, W >= 75; 299 for standard FID) -> pool features [N, 2048].

  Attribute names follow the torch module names, so a module's path is its tensor-name prefix.
  """

  def __init__(self):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
    self.Mixed_5b = FIDInceptionA(192, pool_features=32)
    self.Mixed_5c = FIDInceptionA(256, pool_features=64)
    self.Mixed_5d = FIDInceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, c7=128)
    self.Mixed_6c = FIDInceptionC(768, c7=160)
    self.Mixed_6d = FIDInceptionC(768, c7=160)
    self.Mixed_6e = FIDInceptionC(768, c7=192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, pool="avg")
    self.Mixed_7c = FIDInceptionE(2048, pool="max")

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, 2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = max_pool(x, 2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return x.mean(axis=(1, 2))


# ------------------------------------------------------------------------------------------------ weights


def expected_tensors(model: FIDInceptionV3) -> dict[str, tuple[int, ...]]:
  """The pytorch-fid tensor names and torch (OIHW) shapes the model needs; `fc.*` is not among them."""
  shapes = {}
  for path, module in nnx.iter_modules(model):
    if isinstance(module, BasicConv2d):
      prefix = ".".join(str(p) for p in path)
      kh, kw, cin, cout = module.kernel.shape
      shapes[f"{prefix}.conv.weight"] = (cout, cin, kh, kw)
      for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.bn.{name}"] = (cout,)
  return shapes


def load_fid_inception(path: str | os.PathLike, *, expected_sha256: str | None = None) -> FIDInceptionV3:
  """Builds FIDInceptionV3 from a pytorch-fid-layout `.safetensors` file, folding each BatchNorm into its conv."""
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  if expected_sha256 is not None:
    verify_sha256(path, expected_sha256)
  try:
    tensors = load_file(os.fspath(path))
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{path}: not a readable .safetensors file ({e})") from None
  model = nnx.eval_shape(FIDInceptionV3)  # Shapes only: the real values are set below.
  want = expected_tensors(model)
  missing = [n for n in want if n not in tensors]
  if missing:
    raise ValueError(
        f"{path}: {len(missing)} of {len(want)} FID Inception tensors missing (first: {missing[0]}); "
        "convert pytorch-fid's weights with `python -m conprediff_jax.evaluation.convert_fid_weights`")
  for name, shape in want.items():
    if tuple(tensors[name].shape) != shape:
      raise ValueError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
  for path_, module in nnx.iter_modules(model):
    if isinstance(module, BasicConv2d):
      p = ".".join(str(s) for s in path_)
      get = lambda n, p=p: tensors[f"{p}.{n}"].astype(np.float64)  # Fold in float64, store float32.
      scale = get("bn.weight") / np.sqrt(get("bn.running_var") + BN_EPS)
      kernel = np.transpose(get("conv.weight"), (2, 3, 1, 0)) * scale  # OIHW -> HWIO, scaled per output channel.
      bias = get("bn.bias") - get("bn.running_mean") * scale
      module.kernel.set_value(jnp.asarray(kernel, jnp.float32))
      module.bias.set_value(jnp.asarray(bias, jnp.float32))
  return model


# ------------------------------------------------------------------------------------------------ features


def quantize_to_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 images pass through; float images in [-1, 1] are rounded to uint8 as a saved PNG would be."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
  if images.size and (np.nanmin(images) < -1.5 or np.nanmax(images) > 1.5):
    raise ValueError(f"float images must be in [-1, 1], got range [{images.min():.3g}, {images.max():.3g}]")
  scaled = (np.nan_to_num(images.astype(np.float32)) + 1.0) * 127.5
  return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _features_from_uint8(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, image_size: int) -> jax.Array:
  """uint8 [B, H, W, 3] -> [0, 1] -> bilinear resize (half-pixel, no antialias, like F.interpolate) -> [-1, 1]."""
  x = images.astype(jnp.float32) / 255.0
  b, h, w, c = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, c), method="bilinear", antialias=False)
  return nnx.merge(graphdef, state)(2.0 * x - 1.0)


class InceptionFeatures:
  """FID Inception features of image sets, jitted, in fixed-size batches (one compile per batch size)."""

  def __init__(self, weights_path: str | os.PathLike, *, expected_sha256: str | None = None,
               image_size: int = FID_IMAGE_SIZE, batch_size: int = 50):
    if image_size < MIN_IMAGE_SIZE:
      raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    self.weights_path = os.fspath(weights_path)
    self.sha256 = verify_sha256(weights_path, expected_sha256)  # Recorded so results can cite the weights.
    self.image_size = image_size
    self.batch_size = batch_size
    self._graphdef, self._state = nnx.split(load_fid_inception(weights_path))
    self._forward = jax.jit(functools.partial(_features_from_uint8, self._graphdef, image_size=image_size))

  def extract_features(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """images uint8 [N, H, W, C] or float in [-1, 1], C in {1, 3} -> float64 features [N, 2048]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
    images = quantize_to_uint8(images)
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    bs = batch_size or self.batch_size
    out = []
    for start in range(0, images.shape[0], bs):
      batch = images[start:start + bs]
      n = batch.shape[0]
      if n < bs:  # Pad the last batch so every call reuses one compiled shape.
        batch = np.concatenate([batch, np.zeros((bs - n,) + batch.shape[1:], np.uint8)])
      out.append(np.asarray(self._forward(self._state, batch))[:n])
    if not out:
      return np.zeros((0, FEATURE_DIM), np.float64)
    return np.concatenate(out).astype(np.float64)

  def statistics(self, images: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the images' features, for frechet_distance / save_statistics."""
    return fid.feature_statistics(self.extract_features(images, batch_size))
