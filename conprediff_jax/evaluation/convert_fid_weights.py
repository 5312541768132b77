"""Converts pytorch-fid's published FID Inception weights (.pth) to the .safetensors file our loader reads.

    python -m conprediff_jax.evaluation.convert_fid_weights pt_inception-2015-12-05-6726825d.pth fid_inception.safetensors

Run once, by hand, with torch installed (CPU wheel is enough). It checks that the .pth's SHA-256 starts with the
8 hex digits in its published name (the torch-hub convention), keeps the tensor names unchanged, and prints the
SHA-256 of the output: pass that as `expected_sha256` to `InceptionFeatures` to pin the weights.
"""

import argparse
import os
import sys

from conprediff_jax.evaluation.checksums import sha256_file
from conprediff_jax.evaluation.torch_weights import read_state_dict, run_converter

PUBLISHED_NAME = "pt_inception-2015-12-05-6726825d.pth"
PUBLISHED_SHA256_PREFIX = "6726825d"


def convert(src: str | os.PathLike, dst: str | os.PathLike, *,
            expected_sha256_prefix: str | None = PUBLISHED_SHA256_PREFIX) -> str:
  """Writes every tensor of the state dict at `src` to `dst` (.safetensors); returns the SHA-256 of `dst`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  tensors, digest = read_state_dict(src, expected_sha256_prefix=expected_sha256_prefix,
                                    published_name=f"pytorch-fid's {PUBLISHED_NAME}")
  save_file(tensors, os.fspath(dst), metadata={"source": os.path.basename(os.fspath(src)), "source_sha256": digest})
  return sha256_file(dst)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("src", help=f"the pytorch-fid weights, {PUBLISHED_NAME}")
  parser.add_argument("dst", help="output .safetensors path")
  args = parser.parse_args(argv)
  return run_converter(lambda: convert(args.src, args.dst), args.dst)


if __name__ == "__main__":
  sys.exit(main())
