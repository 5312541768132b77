"""Reads a PyTorch state dict (.pth) into NumPy arrays, for the one-off weight converters (FID Inception, LPIPS).

The only `torch.load` in the package: a file the user supplies, checked against the SHA-256 prefix in its
published name (the torch-hub convention) before it is read, with `weights_only=True`, which restricts the
unpickler to tensors and plain containers. Nothing that runs at training or evaluation time calls this: it reads
the `.safetensors` files the converters write.
"""

import os
import sys
from collections.abc import Callable

import numpy as np

from conprediff_jax.evaluation.checksums import sha256_file


def read_state_dict(src: str | os.PathLike, *, expected_sha256_prefix: str | None = None,
                    published_name: str = "") -> tuple[dict[str, np.ndarray], str]:
  """The tensors of the state dict at `src` (training counters left out) and the file's SHA-256."""
  if not os.path.isfile(src):
    raise ValueError(f"{src}: no such file{f' (supply {published_name})' if published_name else ''}")
  digest = sha256_file(src)
  if expected_sha256_prefix is not None and not digest.startswith(expected_sha256_prefix):
    raise ValueError(f"{src}: SHA-256 {digest} does not start with {expected_sha256_prefix}"
                     f"{f' (expected {published_name})' if published_name else ''}")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"reading {src} needs torch (pip install torch==2.13.0, the CPU wheel)") from None
  try:
    state = torch.load(os.fspath(src), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # A damaged or foreign file: one line.
    raise ValueError(f"{src}: not a readable PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0]})"
                     ) from None
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{src}: expected a state dict, got {type(state).__name__}")
  return {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in state.items()
          if isinstance(t, torch.Tensor) and not name.endswith("num_batches_tracked")}, digest


def run_converter(convert: Callable[[], str], dst: str) -> int:
  """A converter command's exit status: 0 with the output's path and SHA-256 (what `convert` returns) printed, or 2
  with a bad input's one line (no traceback)."""
  try:
    digest = convert()
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {dst}\nsha256 {digest}")
  return 0
