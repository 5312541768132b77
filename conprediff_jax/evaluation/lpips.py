r"""LPIPS, the learned perceptual image distance (Zhang et al., CVPR 2018), as the `lpips` package's version 0.1
computes it, in Flax NNX: the paper's inpainting metric and the first stages' perceptual loss.

    python -m conprediff_jax.evaluation.lpips --net=vgg --backbone=vgg16-397923af.pth --out=distances.json DIR_A DIR_B

scores the images of two folders paired by file name, as `lpips`'s own script does, writes
`{"mean": ..., "pairs": {"<file name>": ...}}` and prints the mean.

    d(x, y) = sum_l mean_hw  w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2

f_l are five ReLU outputs of an ImageNet backbone (torchvision's VGG16 or AlexNet `features`) on the images shifted
and scaled per channel (lpips's ScalingLayer), each position's feature vector divided by its norm over channels
(+1e-10), and w_l >= 0 the learned linear heads that ship inside the `lpips` package (`weights/v0.1/<net>.pth`).
Images are NHWC in [-1, 1]; a grey image is read as three equal channels.

Weights: one .safetensors holding torchvision's `features.<i>.weight/bias` and lpips's `lin<l>.model.1.weight`,
written once from the torchvision state dict the user supplies (checked against the SHA-256 prefix in its published
name) and the heads by `python -m conprediff_jax.evaluation.convert_lpips_weights`; `--backbone` also takes the
torchvision file itself and converts it in memory (with torch and the `lpips` package installed). Nothing here
downloads anything. Equal to the `lpips` package within 1e-5 on random weights and images (tests/test_lpips.py).
"""

import argparse
import dataclasses
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conprediff_jax import atomic_files
from conprediff_jax.evaluation.checksums import sha256_file
from conprediff_jax.evaluation.checksums import verify_sha256
from conprediff_jax.evaluation.inception import BasicConv2d
from conprediff_jax.evaluation.inception import max_pool

VERSION = "0.1"
EPS = 1e-10  # lpips.normalize_tensor
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)  # lpips.ScalingLayer
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A torchvision `features` stack up to its last compared ReLU, by the index of each layer in it."""
  convs: dict[int, tuple[int, int, int, int, int]]  # index: (in, out, kernel, stride, padding), a ReLU at index + 1
  pools: dict[int, tuple[int, int]]                 # index: (window, stride)
  taps: tuple[int, ...]                             # the ReLUs compared (lpips's slice ends - 1)
  published_name: str                               # torchvision's file; its name holds its SHA-256 prefix
  heads_sha256: str                                 # lpips 0.1.4's weights/v0.1/<net>.pth

  @property
  def channels(self) -> tuple[int, ...]:
    return tuple(self.convs[tap - 1][1] for tap in self.taps)

  @property
  def sha256_prefix(self) -> str:
    return self.published_name.rsplit("-", 1)[1].split(".")[0]


def _vgg16() -> Backbone:
  convs, pools, taps, i, cin = {}, {}, [], 0, 3
  for block, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
    if block:
      pools[i], i = (2, 2), i + 1
    for _ in range(depth):
      convs[i], cin, i = (cin, width, 3, 1, 1), width, i + 2
    taps.append(i - 1)
  return Backbone(convs, pools, tuple(taps), "vgg16-397923af.pth",
                  "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868")


BACKBONES = {
    "vgg": _vgg16(),
    "alex": Backbone({0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
                      10: (256, 256, 3, 1, 1)}, {2: (3, 2), 5: (3, 2)}, (1, 4, 7, 9, 11), "alexnet-owt-7be5be79.pth",
                     "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
}


def smallest_side(net: str) -> int:
  """The smallest image side whose every compared layer keeps at least one position."""
  spec, side = _backbone(net), 1
  while True:
    size, fits = side, True
    for i in range(spec.taps[-1] + 1):
      if i in spec.convs:
        _, _, k, stride, pad = spec.convs[i]
        size = (size + 2 * pad - k) // stride + 1
      elif i in spec.pools:
        window, stride = spec.pools[i]
        size = (size - window) // stride + 1
      fits &= size >= 1
    if fits:
      return side
    side += 1


def _backbone(net: str) -> Backbone:
  if net not in BACKBONES:
    raise ValueError(f"LPIPS net {net!r} is not one of {sorted(BACKBONES)}")
  return BACKBONES[net]


class LPIPS(nnx.Module):
  """`model(x, y)`: the LPIPS distance of each pair of images, [N]. Weights: `load` (zeros until then)."""

  def __init__(self, net: str = "vgg"):
    spec = _backbone(net)
    self.net = net
    self.convs = nnx.List([BasicConv2d(cin, cout, k, stride, pad) for _, (cin, cout, k, stride, pad)
                           in sorted(spec.convs.items())])
    self.heads = nnx.List([nnx.Param(jnp.zeros((c,), jnp.float32)) for c in spec.channels])

  def features(self, x: jax.Array) -> list[jax.Array]:
    spec, convs, taps = BACKBONES[self.net], iter(self.convs), []
    x = (x - SHIFT) / SCALE
    for i in range(spec.taps[-1] + 1):
      if i in spec.convs:
        x = next(convs)(x)  # the conv and the ReLU after it
      elif i in spec.pools:
        window, stride = spec.pools[i]
        x = max_pool(x, stride, window=window)
      if i in spec.taps:
        taps.append(x)
    return taps

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape:
      raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < smallest_side(self.net):
      raise ValueError(f"LPIPS-{self.net} needs images of at least {smallest_side(self.net)}x"
                       f"{smallest_side(self.net)} pixels, got {x.shape[1]}x{x.shape[2]}")
    if x.shape[-1] == 1:
      x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
    # x and y through the network apart: concatenated, a batch split over chips was permuted between them (2.3 GB a
    # chip and step for paper_kl.py's stage on a v5p-16: docs/scaling.md), and a constant y's half was differentiated.
    unit = lambda f: f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)
    total = 0.0
    for fx, fy, head in zip(self.features(x.astype(jnp.float32)), self.features(y.astype(jnp.float32)), self.heads):
      total += jnp.mean(jnp.einsum("nhwc,c->nhw", (unit(fx) - unit(fy)) ** 2, head[...],
                                   precision=jax.lax.Precision.HIGHEST), axis=(1, 2))
    return total


# ------------------------------------------------------------------------------------------------ weights


def expected_tensors(net: str) -> dict[str, tuple[int, ...]]:
  """The torchvision and lpips tensor names and torch shapes a `net` needs."""
  spec = _backbone(net)
  shapes = {}
  for i, (cin, cout, k, _, _) in spec.convs.items():
    shapes[f"features.{i}.weight"], shapes[f"features.{i}.bias"] = (cout, cin, k, k), (cout,)
  for l, c in enumerate(spec.channels):
    shapes[f"lin{l}.model.1.weight"] = (1, c, 1, 1)
  return shapes


def from_tensors(net: str, tensors: dict[str, np.ndarray], source: str = "the weights") -> LPIPS:
  """An LPIPS `net` with the given torch-layout tensors; a missing tensor or a wrong shape is one line."""
  want = expected_tensors(net)
  missing = [name for name in want if name not in tensors]
  if missing:
    raise ValueError(f"{source}: {len(missing)} of {len(want)} LPIPS-{net} tensors missing (first: {missing[0]}); "
                     "write the file with `python -m conprediff_jax.evaluation.convert_lpips_weights`")
  for name, shape in want.items():
    if tuple(tensors[name].shape) != shape:
      raise ValueError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, LPIPS-{net} needs {shape}")
  model = nnx.eval_shape(lambda: LPIPS(net))
  for conv, i in zip(model.convs, sorted(BACKBONES[net].convs)):
    conv.kernel.set_value(jnp.asarray(np.transpose(tensors[f"features.{i}.weight"], (2, 3, 1, 0)), jnp.float32))
    conv.bias.set_value(jnp.asarray(tensors[f"features.{i}.bias"], jnp.float32))
  for l, head in enumerate(model.heads):
    head.set_value(jnp.asarray(tensors[f"lin{l}.model.1.weight"].reshape(-1), jnp.float32))
  return model


def heads_file(net: str) -> str:
  """The linear heads that ship inside the installed `lpips` package (found without importing it)."""
  spec = importlib.util.find_spec("lpips")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("the LPIPS heads ship inside the lpips package: pip install --no-deps lpips==0.1.4, or pass "
                     "--heads")
  return os.path.join(spec.submodule_search_locations[0], "weights", f"v{VERSION}", f"{net}.pth")


def torch_tensors(net: str, backbone: str | os.PathLike, heads: str | os.PathLike | None = None, *,
                  check_backbone: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """The tensors LPIPS-`net` needs from torchvision's state dict `backbone` (its SHA-256 prefix checked unless
  `check_backbone` is False) and lpips's heads (the installed package's unless `heads` is given, then unchecked);
  and where they came from."""
  from conprediff_jax.evaluation.torch_weights import read_state_dict  # pylint: disable=g-import-not-at-top
  spec = _backbone(net)
  features, backbone_sha = read_state_dict(
      backbone, expected_sha256_prefix=spec.sha256_prefix if check_backbone else None,
      published_name=f"torchvision's {spec.published_name}")
  if heads is None:
    heads = heads_file(net)
    verify_sha256(heads, spec.heads_sha256)
  lins, heads_sha = read_state_dict(heads)
  tensors = {k: v for k, v in features.items() if k.startswith("features.")}
  tensors.update({k: v for k, v in lins.items() if k.startswith("lin")})
  return tensors, {"net": net, "version": VERSION, "backbone": os.path.basename(os.fspath(backbone)),
                   "backbone_sha256": backbone_sha, "heads_sha256": heads_sha}


def load(path: str | os.PathLike, net: str | None = None, *, expected_sha256: str | None = None) -> LPIPS:
  """LPIPS from a .safetensors file `convert_lpips_weights` wrote; the net is the file's unless `net` is given."""
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such LPIPS weights file; write one with "
                     "`python -m conprediff_jax.evaluation.convert_lpips_weights`")
  verify_sha256(path, expected_sha256)
  try:
    with safe_open(os.fspath(path), framework="numpy") as f:
      stored = (f.metadata() or {}).get("net")
      tensors = {name: f.get_tensor(name) for name in f.keys()}
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{path}: not a readable .safetensors file ({e})") from None
  if net is not None and stored is not None and net != stored:
    raise ValueError(f"{path} holds LPIPS-{stored} weights, not {net}")
  return from_tensors(net or stored or "vgg", tensors, os.fspath(path))


def open_weights(net: str, path: str | os.PathLike, heads: str | os.PathLike | None = None) -> tuple[LPIPS, str]:
  """A converted .safetensors file, or torchvision's state dict converted in memory; and the file's SHA-256."""
  if os.fspath(path).endswith(".safetensors"):
    return load(path, net), sha256_file(path)
  tensors, source = torch_tensors(net, path, heads)
  return from_tensors(net, tensors, os.fspath(path)), source["backbone_sha256"]


# ------------------------------------------------------------------------------------------------ two folders


def distance_fn(model: LPIPS, batch_size: int = 16):
  """`(x, y) -> [N]` (NumPy) of the model's weights, jitted, `batch_size` pairs at a time; images uint8 or float in
  [-1, 1], NHWC."""
  graphdef, state = nnx.split(model)
  step = jax.jit(lambda state, x, y: nnx.merge(graphdef, state)(x, y))
  as_float = lambda a: np.asarray(a, np.float32) / 127.5 - 1.0 if np.asarray(a).dtype == np.uint8 else a

  def distances(x, y):
    x, y = as_float(x), as_float(y)
    return np.concatenate([np.asarray(step(state, x[i:i + batch_size], y[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])
  return distances


def read_image(path: str) -> np.ndarray:
  """An image file as RGB float32 in [-1, 1], [H, W, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("RGB"), np.float32)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from None
  return pixels / 127.5 - 1.0


def pair_folders(dir_a: str, dir_b: str) -> list[str]:
  """The image file names present in both folders, sorted; those in one only are named in one warning line."""
  listed = []
  for d in (dir_a, dir_b):
    if not os.path.isdir(d):
      raise ValueError(f"{d}: no such folder")
    listed.append({f for f in os.listdir(d) if f.lower().endswith(IMAGE_SUFFIXES)})
  names = sorted(listed[0] & listed[1])
  if not names:
    raise ValueError(f"no image file name is in both {dir_a} and {dir_b}")
  alone = sorted(listed[0] ^ listed[1])
  if alone:
    print(f"warning: {len(alone)} image(s) in one folder only are left out (first: {alone[0]})", file=sys.stderr)
  return names


def score_folders(model: LPIPS, dir_a: str, dir_b: str) -> dict[str, float]:
  """The distance of each pair of images of the two folders, by file name."""
  distance, names, scores = distance_fn(model), pair_folders(dir_a, dir_b), {}
  by_shape = {}
  for name in names:
    a, b = read_image(os.path.join(dir_a, name)), read_image(os.path.join(dir_b, name))
    if a.shape != b.shape:
      raise ValueError(f"{name}: {a.shape[:2]} in {dir_a} but {b.shape[:2]} in {dir_b}")
    by_shape.setdefault(a.shape, []).append((name, a, b))
  for pairs in by_shape.values():
    d = distance(np.stack([a for _, a, _ in pairs]), np.stack([b for _, _, b in pairs]))
    scores.update({name: float(v) for (name, _, _), v in zip(pairs, d)})
  return {name: scores[name] for name in names}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="LPIPS distances of two folders' images paired by file name.")
  parser.add_argument("dir_a")
  parser.add_argument("dir_b")
  parser.add_argument("--net", default="vgg", choices=sorted(BACKBONES))
  parser.add_argument("--backbone", required=True, help="the .safetensors convert_lpips_weights wrote, or "
                      "torchvision's state dict (vgg16-397923af.pth, alexnet-owt-7be5be79.pth)")
  parser.add_argument("--heads", default=None, help="lpips's weights/v0.1/<net>.pth (default: the installed lpips)")
  parser.add_argument("--out", default="", help="write {mean, pairs} here as JSON")
  args = parser.parse_args(argv)
  try:
    model, weights_sha = open_weights(args.net, args.backbone, args.heads)
    pairs = score_folders(model, args.dir_a, args.dir_b)
    mean = float(np.mean(list(pairs.values())))
    if args.out:
      atomic_files.write_json(args.out, {"net": args.net, "version": VERSION, "weights_sha256": weights_sha,
                                         "mean": mean, "pairs": pairs})
  except (ValueError, OSError) as e:  # bad input: one line, no traceback
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"LPIPS-{args.net} mean over {len(pairs)} pairs: {mean:.6f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
