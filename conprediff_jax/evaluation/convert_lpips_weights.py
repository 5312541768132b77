"""Writes LPIPS weights: torchvision's ImageNet VGG16 or AlexNet state dict (which the user supplies) and the linear
heads of the `lpips` package, as the one .safetensors file `conprediff_jax.evaluation.lpips` reads.

    python -m conprediff_jax.evaluation.convert_lpips_weights --net=vgg vgg16-397923af.pth lpips_vgg.safetensors
    python -m conprediff_jax.evaluation.convert_lpips_weights --net=alex alexnet-owt-7be5be79.pth lpips_alex.safetensors

Run once, with torch (the CPU wheel is enough) and `lpips` installed (`pip install --no-deps lpips==0.1.4`: its
torchvision dependency is not needed here and, from the registry, does not load beside the CPU torch). The backbone's
SHA-256 must start with the 8 hex digits in its published name, the heads' must equal lpips 0.1.4's; the output's
SHA-256 is printed (pass it as `expected_sha256` to `lpips.load` to pin the weights).
"""

import argparse
import os
import sys

from conprediff_jax.evaluation import lpips
from conprediff_jax.evaluation.checksums import sha256_file
from conprediff_jax.evaluation.torch_weights import run_converter


def convert(net: str, backbone: str | os.PathLike, dst: str | os.PathLike, heads: str | os.PathLike | None = None,
            *, check_backbone: bool = True) -> str:
  """Writes the tensors LPIPS-`net` needs to `dst` (.safetensors) and returns its SHA-256."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  tensors, source = lpips.torch_tensors(net, backbone, heads, check_backbone=check_backbone)
  lpips.from_tensors(net, tensors, os.fspath(backbone))  # every tensor there, of its shape, before anything is written
  save_file({k: tensors[k] for k in lpips.expected_tensors(net)}, os.fspath(dst), metadata=source)
  return sha256_file(dst)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--net", default="vgg", choices=sorted(lpips.BACKBONES))
  parser.add_argument("--heads", default=None, help="lpips's weights/v0.1/<net>.pth (default: the installed lpips)")
  parser.add_argument("backbone", help="torchvision's state dict: " +
                      ", ".join(b.published_name for b in lpips.BACKBONES.values()))
  parser.add_argument("dst", help="output .safetensors path")
  args = parser.parse_args(argv)
  return run_converter(lambda: convert(args.net, args.backbone, args.dst, args.heads), args.dst)


if __name__ == "__main__":
  sys.exit(main())
