"""conprediff_jax: diffusion models with context prediction (ConPreDiff) in JAX/Flax NNX."""

import glob
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _keep_jax_off_an_absent_tpu() -> None:
  """libtpu (requirements-dev.txt installs it: --mode=compile compiles for TPU slices with it) starts up in every JAX
  program, and where no TPU is attached it prints half a dozen lines of its failure before JAX falls back to the
  CPU. When JAX_PLATFORMS is unset, libtpu is installed, no TPU is on the PCI bus (Google's vendor id, as JAX
  itself looks) and no GPU is attached, JAX is kept on the CPU, which is where it would end up."""
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"):  # an NVIDIA or AMD GPU
    return
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    with open(vendor, encoding="ascii") as f:
      if f.read().strip() == "0x1ae0":
        return
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # imported before this package: its flags were read already
    sys.modules["jax"].config.update("jax_platforms", "cpu")


_keep_jax_off_an_absent_tpu()
