"""Accelerators by the names they are sold under, and the figures of each chip that a compile report needs.

    slice_ = hardware.parse_topology("v5p-32")   # Slice(chip=CHIPS["v5p"], chips=16, shape=(2, 2, 4))
    devices = hardware.abstract_devices(slice_, num_slices=2)  # the compiler's devices of that job, no TPU

TPU names are those of `gcloud compute tpus tpu-vm create --accelerator-type`: v4-N and v5p-N count TensorCores (two
per chip), v5e-N (also v5litepod-N) and v6e-N count chips. `h100-N` is N NVIDIA H100 SXM GPUs, eight to a host.
`abstract_devices` needs the compiler, not the chip: libtpu (`jax[tpu]`, in requirements-dev.txt) for a TPU slice;
for GPUs the CUDA plugin (requirements-gpu-compile.txt, optional) and a target description of the GPU
(`H100_TARGET`). JAX_PLATFORMS=cpu keeps JAX itself on the CPU (main.py sets it for --mode=compile --topology=...).

The chip table is the one place that states peak FLOP/s, HBM capacity and bandwidth, per chip, from each maker's
page (`Chip.source`). `compiler_hbm_bytes` is what one program may use: for a TPU, what its compiler allows
("exceeds available HBM (30.75G)", G = GiB), read from its refusals on this libtpu (tests/test_compile_report.py
provokes one per chip and checks it); for a GPU, the 75% of its memory that JAX's allocator takes by default
(XLA_PYTHON_CLIENT_MEM_FRACTION).
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
  platform: str = "tpu"

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
_H100_MEMORY = 81559 * 2**20  # as CUDA reports an H100 SXM 80GB's total memory
GPUS = {
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 989e12, _H100_MEMORY, int(0.75 * _H100_MEMORY), 3.35e12, 1,
                 "https://www.nvidia.com/en-us/data-center/h100/", platform="gpu"),
}
GPUS_PER_HOST = 8
ALIASES = {"v5litepod": "v5e"}

# The GPU as XLA's compiler needs to know it when none is attached (a GpuTargetConfigProto, as text): the H100 SXM's
# published CUDA device properties (compute capability 9.0, 132 SMs).
H100_TARGET = f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3350000000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98 device_memory_size: {_H100_MEMORY}
  shared_memory_per_block_optin: 232448 cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
device_description_str: "NVIDIA H100 80GB HBM3"
"""

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
          f"{sorted(_SHAPES_2D)} (e.g. {two}); or h100-N, N GPUs, 1 to 8 or a multiple of 8")


def parse_topology(name: str) -> Slice:
  """The slice an accelerator type names; ValueError (one line listing the valid forms) for anything else."""
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
  kind = ALIASES.get(match.group(1), match.group(1)) if match else None
  if kind in GPUS:
    count = int(match.group(2))
    if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
      raise ValueError(f"--topology={name!r}: {count} GPUs are neither one host's 1-{GPUS_PER_HOST} nor whole hosts "
                       f"of {GPUS_PER_HOST}; use {valid_forms()}")
    return Slice(GPUS[kind], count, (count,))
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
  """The table's chip for a JAX TPU or GPU device (real or abstract); ValueError for any other device."""
  for chip in (*CHIPS.values(), *GPUS.values()):
    if device.device_kind == chip.device_kind:
      return chip
  raise ValueError(f"no chip figures for a {device.device_kind!r} device ({device.platform}); the table has "
                   f"{[c.device_kind for c in CHIPS.values()]}")


def abstract_devices(slice_: Slice, num_slices: int = 1):
  """The devices of `num_slices` such slices as the TPU compiler sees them (jax.experimental.topologies): enough
  to lower and compile for them on a machine that has none. Needs libtpu, and JAX_PLATFORMS=cpu for the rest."""
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: give 1 or more")
  if slice_.chip.platform == "gpu":
    return _abstract_gpus(slice_, num_slices)
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


def _abstract_gpus(slice_: Slice, num_slices: int):
  """GPUs as XLA's GPU compiler sees them with none attached (jax PR 33542): the CUDA plugin's topology from a
  target description, `<partitions>x<hosts>x<GPUs per host>`."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # the plugin's start-up note that no CUDA driver is here
  if num_slices != 1:
    raise ValueError(f"--num_slices={num_slices}: GPU jobs are one slice; give their GPUs, e.g. h100-16")
  per_host = min(slice_.chips, GPUS_PER_HOST)
  try:
    desc = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET,
                                        topology=f"1x{slice_.chips // per_host}x{per_host}")
  except (RuntimeError, NotImplementedError) as e:  # no CUDA plugin (or one that cannot compile without a GPU)
    raise ValueError(f"--topology={slice_.name}: the GPU compiler is not available ({str(e).splitlines()[0]}); "
                     "install it with pip install -r requirements-gpu-compile.txt") from None
  return list(desc.devices)


def hosts(devices) -> int:
  return len({d.process_index for d in devices})


def roofline_seconds(chip: Chip, flops: float, bytes_accessed: float) -> float:
  """A lower bound on a step's time: its FLOPs at the chip's peak or its bytes at the HBM bandwidth, the larger."""
  return max(flops / chip.bf16_flops, bytes_accessed / chip.hbm_bandwidth)


def is_finite_positive(x) -> bool:
  return x is not None and math.isfinite(x) and x > 0
