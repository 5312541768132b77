"""Accelerators by the names the cloud sells them under, and the figures of each chip that a compile report needs.

    slice_ = hardware.parse_topology("v5p-32")   # Slice(chip=CHIPS["v5p"], chips=16, shape=(2, 2, 4))
    devices = hardware.abstract_devices(slice_, num_slices=2)  # the TPU compiler's devices of that job, no TPU

Names are those of `gcloud compute tpus tpu-vm create --accelerator-type`: v4-N and v5p-N count TensorCores (two
per chip), v5e-N (also v5litepod-N) and v6e-N count chips. `abstract_devices` needs libtpu (`pip install
"jax[tpu]"`), not a TPU; JAX_PLATFORMS=cpu keeps JAX itself on the CPU (compile_report.py sets it up).

The chip table is the one place that states peak FLOP/s, HBM capacity and bandwidth. The figures are Google
Cloud's, per chip, from each generation's system-architecture page (`Chip.source`). `compiler_hbm_bytes` is what
the TPU compiler itself allows a program ("exceeds available HBM (30.75G)", G = GiB), read from its refusals on
this libtpu (tests/test_compile_report.py provokes one and checks it).
"""

import dataclasses
import math
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str                  # as in the accelerator type: "v5p"
  device_kind: str           # as JAX reports it
  bf16_flops: float          # dense peak per chip, FLOP/s
  hbm_bytes: int             # per chip, as the spec sheet gives it
  compiler_hbm_bytes: int    # what the TPU compiler lets one program use per chip (its "available HBM")
  hbm_bandwidth: float       # bytes/s per chip
  cores_per_chip: int        # TensorCores: what the N of "v4-N" and "v5p-N" counts
  source: str

  @property
  def ridge_flops_per_byte(self) -> float:
    """Arithmetic intensity above which a program can be compute-bound on this chip."""
    return self.bf16_flops / self.hbm_bandwidth


_CLOUD = "https://cloud.google.com/tpu/docs/"
CHIPS = {
    "v4": Chip("v4", "TPU v4", 275e12, 32 * GIB, int(30.75 * GIB), 1200e9, 2, _CLOUD + "v4"),
    "v5p": Chip("v5p", "TPU v5", 459e12, 95 * 10**9, int(95.74 * GIB), 2765e9, 2, _CLOUD + "v5p"),
    "v5e": Chip("v5e", "TPU v5 lite", 197e12, 16 * 10**9, int(15.75 * GIB), 819e9, 1, _CLOUD + "v5e"),
    "v6e": Chip("v6e", "TPU v6 lite", 918e12, 32 * 10**9, int(31.25 * GIB), 1638e9, 1, _CLOUD + "v6e"),
}
ALIASES = {"v5litepod": "v5e"}

# Slice shapes by chip count, as the cloud builds them: a 3-D torus for v4/v5p, a 2-D one for v5e/v6e.
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
# A host drives 4 chips (2x2x1) in a multi-host slice; v5e/v6e slices of up to 8 chips are one host.
_HOST_BOUNDS = (2, 2, 1)
_SINGLE_HOST_2D = 8


@dataclasses.dataclass(frozen=True)
class Slice:
  chip: Chip
  chips: int
  shape: tuple[int, ...]

  @property
  def name(self) -> str:
    return f"{self.chip.name}-{self.chips * self.chip.cores_per_chip}"

  @property
  def accelerator_type(self) -> str:
    """The cloud's name (v5e's is v5litepod-N)."""
    return f"{'v5litepod' if self.chip.name == 'v5e' else self.chip.name}-{self.chips * self.chip.cores_per_chip}"

  @property
  def topology(self) -> str:
    """libtpu's name for the slice, e.g. "v5p:2x2x4"."""
    return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"


def valid_forms() -> str:
  three = ", ".join(f"{n}-{c * 2}" for n in ("v4", "v5p") for c in (4, 16, 64))
  two = ", ".join(f"{n}-{c}" for n in ("v5e", "v6e") for c in (1, 8, 256))
  return (f"accelerator types as the cloud names them: v4-N and v5p-N with N = 2 x chips in "
          f"{sorted(2 * c for c in _SHAPES_3D)} (e.g. {three}); v5e-N (or v5litepod-N) and v6e-N with N chips in "
          f"{sorted(_SHAPES_2D)} (e.g. {two})")


def parse_topology(name: str) -> Slice:
  """The slice an accelerator type names; ValueError (one line listing the valid forms) for anything else."""
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
  kind = ALIASES.get(match.group(1), match.group(1)) if match else None
  if kind not in CHIPS:
    raise ValueError(f"--topology={name!r} is not a TPU slice; use {valid_forms()}")
  chip, count = CHIPS[kind], int(match.group(2))
  shapes = _SHAPES_3D if chip.cores_per_chip == 2 else _SHAPES_2D
  chips = count // chip.cores_per_chip
  if count % chip.cores_per_chip or chips not in shapes:
    raise ValueError(f"--topology={name!r}: there is no {kind} slice of {count} "
                     f"{'TensorCores' if chip.cores_per_chip == 2 else 'chips'}; use {valid_forms()}")
  return Slice(chip, chips, shapes[chips])


def chip_of(device) -> Chip:
  """The table's chip for a JAX TPU device (real or abstract); ValueError for any other device."""
  for chip in CHIPS.values():
    if device.device_kind == chip.device_kind:
      return chip
  raise ValueError(f"no chip figures for a {device.device_kind!r} device ({device.platform}); the table has "
                   f"{[c.device_kind for c in CHIPS.values()]}")


def abstract_devices(slice_: Slice, num_slices: int = 1):
  """The devices of `num_slices` such slices as the TPU compiler sees them (jax.experimental.topologies): enough
  to lower and compile for them on a machine that has none. Needs libtpu, and JAX_PLATFORMS=cpu for the rest."""
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: give 1 or more")
  # What a TPU VM's environment would say, so that libtpu does not go looking (and print that it failed): no
  # metadata server, one worker. A real TPU VM's own settings are kept.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes a machine-wide lock per process; compiling (not running) needs no exclusive device.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  single_host = slice_.chip.cores_per_chip == 1 and slice_.chips <= _SINGLE_HOST_2D
  bounds = (*slice_.shape, 1)[:3] if single_host else _HOST_BOUNDS
  kwargs = {"chips_per_host_bounds": bounds}
  if slice_.chip.cores_per_chip == 2:
    kwargs["chip_config_name"] = "megacore"  # one device per chip, its two TensorCores driven as one
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=slice_.topology, num_slices=num_slices,
                                        **kwargs)
  except RuntimeError as e:  # no libtpu in this environment, or this libtpu lacks the chip
    raise ValueError(f"--topology={slice_.name}: the TPU compiler is not available ({str(e).splitlines()[0]}); "
                     "install it with pip install -r requirements-dev.txt (jax[tpu])") from None
  devices = list(desc.devices)
  if len(devices) != slice_.chips * num_slices:
    raise ValueError(f"--topology={slice_.name}: libtpu made {len(devices)} devices for {num_slices} slice(s) of "
                     f"{slice_.chips} chips")
  return devices


def hosts(devices) -> int:
  return len({d.process_index for d in devices})


def roofline_seconds(chip: Chip, flops: float, bytes_accessed: float) -> float:
  """A lower bound on a step's time: its FLOPs at the chip's peak or its bytes at the HBM bandwidth, the larger."""
  return max(flops / chip.bf16_flops, bytes_accessed / chip.hbm_bandwidth)


def is_finite_positive(x) -> bool:
  return x is not None and math.isfinite(x) and x > 0
