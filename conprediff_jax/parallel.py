"""Device mesh, shardings and multi-host start-up.

The mesh has the axes `data` and `fsdp`, and optionally `model`. Batches are split over `data` and `fsdp`. Every
parameter-shaped array (parameters, EMA, optimiser moments) is split over `model` along its last dimension (a
layer's output features: attention projections, MLP and convolution widths), when that divides evenly: tensor
parallelism for wide layers, with the compiler inserting the collectives. It is then split over `fsdp` along its
largest other dimension that divides evenly, and replicated where nothing does. One rule for every array keeps
optimiser state aligned with its parameters.
"""

import math
import os

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from conprediff_jax.config_validation import ConfigError

BATCH_AXES = ("data", "fsdp")
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
AXES = (*BATCH_AXES, MODEL_AXIS)
# Arrays smaller than this stay replicated: splitting them costs more in collectives than it saves in memory.
MIN_SHARDED_SIZE = 2**14


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the launcher asked for one (see launch/); a no-op on one host.

  TPU pods and SLURM describe the job themselves; elsewhere (e.g. launch/local_multiprocess.sh) the launcher sets
  CONPREDIFF_COORDINATOR (host:port), CONPREDIFF_NUM_PROCESSES and CONPREDIFF_PROCESS_ID.
  """
  if os.environ.get("CONPREDIFF_MULTIHOST") != "1":
    return
  if "CONPREDIFF_COORDINATOR" in os.environ:
    if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    jax.distributed.initialize(coordinator_address=os.environ["CONPREDIFF_COORDINATOR"],
                               num_processes=int(os.environ["CONPREDIFF_NUM_PROCESSES"]),
                               process_id=int(os.environ["CONPREDIFF_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  """Replaces one -1 in `shape` by what is left of `num_devices`; checks that the product matches."""
  shape = tuple(int(s) for s in shape)
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape {shape} may contain at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if known <= 0 or num_devices % known:
    raise ValueError(f"config.mesh.shape {shape} does not fit {num_devices} devices")
  shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh.shape {shape} needs {math.prod(shape)} devices, {num_devices} are present")
  return shape


def make_mesh(shape, axes, devices=None) -> jax.sharding.Mesh:
  """The mesh over `devices` (default: all). On a multi-slice job the `data` axis spans the slices, whose links
  (the data-centre network) are the slowest, so only the gradient all-reduce crosses them; every other axis stays
  within a slice."""
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(shape, len(devices))
  if not set(BATCH_AXES) <= set(axes):
    raise ValueError(f"config.mesh.axes {tuple(axes)} must include {BATCH_AXES}")
  # Auto axes: shardings are chosen by the compiler from the in/out shardings we give jit.
  axis_types = (jax.sharding.AxisType.Auto,) * len(axes)
  slices = num_slices(devices)
  if slices == 1:
    return jax.make_mesh(shape, tuple(axes), axis_types=axis_types, devices=devices)
  data = list(axes).index("data")
  if shape[data] % slices:
    raise ValueError(f"config.mesh.shape {shape}: the data axis ({shape[data]}) must be a multiple of the {slices} "
                     "slices it spans")
  within = [s // slices if i == data else s for i, s in enumerate(shape)]
  across = [slices if i == data else 1 for i in range(len(shape))]
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  grid = mesh_utils.create_hybrid_device_mesh(within, across, devices, allow_split_physical_axes=True)
  return jax.sharding.Mesh(grid, tuple(axes), axis_types=axis_types)


def num_slices(devices) -> int:
  """How many TPU slices `devices` span (1 off TPU, and on one slice)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp_size: int, model_size: int = 1) -> P:
  """`model` on the last dimension of a matrix or kernel when it divides, then `fsdp` on the largest other evenly
  divisible dimension; small arrays are replicated."""
  if math.prod(shape) < MIN_SHARDED_SIZE:
    return P()
  spec = [None] * len(shape)
  if model_size > 1 and len(shape) >= 2 and shape[-1] % model_size == 0:
    spec[-1] = MODEL_AXIS
  if fsdp_size > 1:
    for dim in np.argsort(shape, kind="stable")[::-1]:
      if spec[dim] is None and shape[dim] % fsdp_size == 0:
        spec[dim] = FSDP_AXIS
        break
  return P(*spec) if any(spec) else P()


def state_shardings(mesh, abstract_state):
  """NamedShardings for every leaf of a (shape-only) train state."""
  fsdp, model = mesh.shape[FSDP_AXIS], dict(mesh.shape).get(MODEL_AXIS, 1)
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp, model)), abstract_state)


def compute_shardings(stored):
  """Where the step computes with weights kept as `stored` (NamedShardings): whole along `fsdp`, split along `model`
  as kept. The state stays split over `fsdp` at rest (parameters, EMA, Adam moments: ZeRO's memory); each step
  gathers the weights once and reduce-scatters their gradients, where the partitioner left to itself may move
  activations to the split kernels instead. None where nothing is split over `fsdp`."""
  drop = lambda entry: None if entry == FSDP_AXIS else entry
  compute = jax.tree.map(lambda s: NamedSharding(s.mesh, P(*map(drop, s.spec))), stored)
  return None if compute == stored else compute


def to_host(x) -> np.ndarray:
  """The whole of a global array on every host (an all-gather across processes where it spans several)."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def data_parallel_size(mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_mesh_and_batch(config, num_devices: int, process_count: int, num_slices: int = 1) -> None:
  """config.mesh against the devices present (and the slices the data axis spans), and the global batch (and its
  train.microbatches parts) against the mesh's data parallelism and the processes; ConfigError otherwise."""
  shape, axes = tuple(config.mesh.shape), tuple(config.mesh.axes)
  if len(shape) != len(axes):
    raise ConfigError("mesh.shape", f"{shape} has {len(shape)} sizes for the {len(axes)} axes {axes} "
                      "(config.mesh.axes)", "give one size per axis")
  if any(a not in axes for a in BATCH_AXES) or len(set(axes)) != len(axes) or not set(axes) <= set(AXES):
    raise ConfigError("mesh.axes", f"{axes} must name each of {BATCH_AXES} once, and may add "
                      f"{MODEL_AXIS!r}", "e.g. ('data', 'fsdp') or ('data', 'fsdp', 'model')")
  if any(s != -1 and s < 1 for s in shape):
    raise ConfigError("mesh.shape", f"{shape} holds sizes other than positive ints and -1",
                      "use positive sizes, and -1 for all remaining devices")
  try:
    resolved = resolve_mesh_shape(shape, num_devices)
  except ValueError:
    raise ConfigError("mesh.shape", f"{shape} does not fit the {num_devices} device(s) present",
                      f"use sizes whose product is {num_devices}, or one -1 for all remaining devices, "
                      "e.g. (-1, 1)") from None
  mesh = dict(zip(axes, resolved))
  if mesh["data"] % num_slices:
    raise ConfigError("mesh.shape", f"{shape} gives the data axis {mesh['data']} devices, which do not split over "
                      f"the {num_slices} slices that axis spans", f"use a multiple of {num_slices} for the data axis")
  batch, parts = config.train.batch_size, config.train.get("microbatches", 1)
  split = math.prod(mesh[a] for a in BATCH_AXES)
  if batch % split:
    raise ConfigError("train.batch_size", f"{batch} (global) does not split over the {split}-way data "
                      f"parallelism of the mesh {mesh}", f"use a multiple of {split}, e.g. {split * math.ceil(batch / split)}")
  if batch % (split * parts):
    raise ConfigError("train.microbatches", f"{parts} parts of the global batch {batch} do not each split over "
                      f"the {split}-way data parallelism of the mesh {mesh}", f"use a divisor of {batch // split}")
  if batch % process_count:
    raise ConfigError("train.batch_size", f"{batch} (global) does not split over the {process_count} processes",
                      f"use a multiple of {process_count}")
