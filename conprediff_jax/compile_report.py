"""--mode=compile: a config's train step and sampler compiled for a TPU slice this machine need not have, and what
the TPU compiler says of them per chip: memory and whether it fits, FLOPs, HBM traffic, predicted step time, MFU.

    python -m conprediff_jax.main --config=configs/celebahq.py --mode=compile --topology=v5p-32 [--num_slices=2]

prints a table and writes <workdir>/compile_<slice>.json. On a machine without TPUs it needs libtpu (requirements-
dev.txt installs jax[tpu]); on a TPU VM, without --topology, it compiles for the attached devices. Nothing is
allocated beyond shapes: the train state, the batch and a latent or token model's first stage (built from the config
that trains it, config.first_stage.config, when no trained one is at hand) are ShapeDtypeStructs that carry the
run's shardings, so a 0.87B model compiles on a laptop. The programs are the trainer's and the sampler's own
(train.jit_train_step, sampling.make_sample_fn) on the config's mesh over the slice's devices.

What the numbers count (docs/scaling.md: the table, and how each was checked):
- Memory per chip, from the compiled program's memory_analysis: arguments (the state's and the batch's shards),
  outputs, the part of the outputs that aliases the (donated) arguments, temporaries (activations, gradients,
  scratch) and the program's code. `hbm_peak_bytes` = arguments + outputs - aliased + temporaries + code, what is
  resident at once; `fits` compares it with the HBM the TPU compiler lets a program use
  (hardware.Chip.compiler_hbm_bytes). The compiler itself refuses a program whose arguments and temporaries
  together exceed that figure, although its message calls the sum "HLO temporaries" (an 8 GiB argument beside
  12 GiB of temporaries was refused as 20G: tests/test_compile_report.py); a refused program is reported as not
  fitting, that sum as its peak, and nothing about its time. On a TPU every array is padded to the chip's tiles,
  so arguments take more than their shapes' bytes.
- flops_per_step, bytes_accessed: the cost analysis of the compiled per-chip program. XLA counts a loop's body once,
  so with train.microbatches = k one part's forward and backward, compiled on its own, is added k - 1 more times.
- collective_bytes: by kind (all-gather, all-reduce, reduce-scatter, ...), the bytes of the whole arrays each chip's
  collectives gather, sum or receive per step (hlo_profile.collectives, which counts the micro-batches' loop as it
  runs): traffic between chips that the roofline does not count. Its time, and how much of it overlaps compute,
  is not predicted here.
- memory_space_copy_bytes: what memory-space assignment copies into and out of a memory other than HBM (on a v4,
  its CMEM: "into S(3)"), per chip and step (hlo_profile.memory_space_copies). Where there are such copies,
  bytes_accessed is not HBM traffic alone and moves with the compiler's staging choices: celebahq_dit.py's step on
  a v4 counted 28% fewer bytes with CMEM assignment off (CMEM_OFF below, kept in the report as `libtpu_init_args`)
  for 8% more of the compiler's cycles, and with it off the v4's cost model gives times (docs/scaling.md).
- predicted_step_seconds: the compiler's cost model (`optimal_seconds`) where it gives a time that the chip's peak
  FLOP/s allows; otherwise (it answers with negative times for v4 and v5e) the roofline, FLOPs at peak or bytes at
  HBM bandwidth, the larger (`time_source` says which). Neither sees the host's input pipeline or dispatch; the
  roofline does not see collectives (collective_bytes), nor does either see those over the data-centre network
  between slices.
- predicted_mfu: flops_per_step / (predicted_step_seconds x the chip's dense bf16 peak). The FLOPs are the compiled
  program's, so recomputation (model.remat) counts as work: MaxText's "hardware FLOPs utilisation". From a roofline
  time it is an upper bound (`upper_bounds`), as are images/s and the time to train: a compute-bound roofline is
  100% by construction.
- where_the_time_goes: the TPU compiler's own cycle estimate of each instruction, as shares by JAX operation and by
  line of the project's code (hlo_profile.py): what a change to the step should move. Absent for GPU programs.
  Pallas kernels (the context loss's sorted solver on a TPU) carry no estimate: they are counted, not shared.
"""

import dataclasses
import functools
import gc
import importlib.metadata
import math
import os
import re
import resource
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from conprediff_jax import atomic_files
from conprediff_jax import checkpointing
from conprediff_jax import data as data_lib
from conprediff_jax import families
from conprediff_jax import hardware
from conprediff_jax import hlo_profile
from conprediff_jax import parallel
from conprediff_jax import sampling
from conprediff_jax import train

_REFUSAL = re.compile(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


def target_devices(topology: str | None, num_slices: int = 1) -> tuple[str, list]:
  """(the slice's name, its devices): `num_slices` abstract slices of `topology`, or the attached TPUs or GPUs."""
  if topology:
    slice_ = hardware.parse_topology(topology)
    name = slice_.name if num_slices == 1 else f"{slice_.name}x{num_slices}"
    return name, hardware.abstract_devices(slice_, num_slices)
  devices = jax.devices()
  if devices[0].platform not in ("tpu", "gpu"):
    raise ValueError(f"--mode=compile: this machine has no TPU or GPU ({devices[0].platform} devices); name the "
                     "slice to compile for, e.g. --topology=v5p-32")
  chip = hardware.chip_of(devices[0])
  return f"{chip.name}-{len(devices) * chip.cores_per_chip}", devices


@dataclasses.dataclass
class Program:
  """A compiled program's per-chip figures, or the compiler's refusal."""
  memory: dict[str, int] | None = None
  flops: float = 0.0
  bytes_accessed: float = 0.0
  optimal_seconds: float | None = None
  refusal: dict[str, Any] | None = None
  compile_seconds: float = 0.0
  profile: dict[str, Any] | None = None  # hlo_profile.profile of the optimised module (TPU programs)
  collectives: dict[str, int] | None = None  # hlo_profile.collectives of the optimised module
  copies: dict[str, int] | None = None  # hlo_profile.memory_space_copies of the optimised module

  @property
  def peak_bytes(self) -> int:
    m = self.memory
    return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]


def compile_program(lowered) -> Program:
  """Compiles `lowered` and keeps its figures, not the executable; JAX's caches are emptied after, so that the
  next program of a report compiles with the host memory this one held (a 256x256 UNet's step takes many GB)."""
  try:
    return _compile(lowered)
  finally:
    jax.clear_caches()
    gc.collect()


def _compile(lowered) -> Program:
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # only the compiler's out-of-memory verdict is an answer
    found = _REFUSAL.search(str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) or not found:
      raise
    return Program(refusal={"required_bytes": int(float(found.group(1)) * hardware.GIB),
                            "available_bytes": int(float(found.group(2)) * hardware.GIB),
                            "message": str(e).strip().splitlines()[0][:300]},
                   compile_seconds=time.perf_counter() - start)
  stats = compiled.memory_analysis()
  memory = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                  "generated_code")}
  cost, text = compiled.cost_analysis(), compiled.as_text()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or _hlo_cost(compiled))
  return Program(memory, float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                 cost.get("optimal_seconds"), compile_seconds=time.perf_counter() - start,
                 profile=hlo_profile.profile(text), collectives=hlo_profile.collectives(text),
                 copies=hlo_profile.memory_space_copies(text))


def _hlo_cost(compiled) -> dict:
  """XLA's cost analysis of the compiled per-device module, for a backend whose executables do not report one (the
  GPU compiler without a GPU): the same HLO cost analysis, run by the CPU client. Empty where JAX's internals do not
  offer it."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    module = compiled._executable.xla_extension_executable().hlo_modules()[0]  # pylint: disable=protected-access
    return dict(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module))
  except Exception:  # pylint: disable=broad-except  # a private interface: no figure rather than a wrong one
    return {}


def shard_bytes(tree) -> int:
  """The bytes of the largest shard of each leaf of a tree of ShapeDtypeStructs with shardings, summed: what one
  chip holds of it."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _with_sharding(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@dataclasses.dataclass
class Target:
  """A config's run on a slice, as shapes: the mesh, the experiment, the abstract state, batch and first stage, each
  ShapeDtypeStruct carrying the sharding the trainer gives it."""
  config: Any
  name: str
  devices: list
  mesh: jax.sharding.Mesh
  exp: train.Experiment
  abstract_state: Any
  shardings: Any
  state: Any
  batch: Any
  key: jax.ShapeDtypeStruct
  stage_shardings: Any
  stage_weights: Any

  @property
  def chip(self) -> hardware.Chip:
    return hardware.chip_of(self.devices[0])


def prepare(config, name: str, devices) -> Target:
  mesh = parallel.make_mesh(config.mesh.shape, config.mesh.axes, devices=devices)
  exp = train.make_experiment(config, families.get(config, abstract_first_stage=True))
  abstract_state = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(config.seed))
  shardings = parallel.state_shardings(mesh, abstract_state)
  batch = _with_sharding(data_lib.batch_spec(config, config.train.batch_size), parallel.batch_sharding(mesh))
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=parallel.replicated(mesh))
  stage = exp.first_stage
  stage_shardings = None if stage is None else parallel.state_shardings(mesh, stage.weights)
  stage_weights = None if stage is None else checkpointing.abstract_with_shardings(stage.weights, stage_shardings)
  return Target(config, name, devices, mesh, exp, abstract_state, shardings,
                checkpointing.abstract_with_shardings(abstract_state, shardings), batch, key, stage_shardings,
                stage_weights)


def compile_train_step(target: Target) -> Program:
  """The trainer's step (train.jit_train_step), compiled for the target."""
  t = target
  with jax.set_mesh(t.mesh):
    return compile_program(train.jit_train_step(t.exp, t.mesh, t.shardings, t.stage_shardings).lower(
        t.state, t.batch, t.key, t.stage_weights))


def compile_microbatch(target: Target) -> Program:
  """One part's forward and backward (train.loss_and_grad) at batch / train.microbatches: the body of the step's
  accumulation loop, whose cost XLA counts once."""
  t, stage = target, target.exp.first_stage

  def part_gradients(state, batch, key, stage_weights):
    first_stage = None if stage is None else nnx.merge(stage.graphdef, stage_weights)
    buffers = families.restrict(state["ema"], t.exp.buffer_shapes)
    return train.loss_and_grad(t.exp, first_stage, state["step"], state["params"], batch, buffers, key, key)

  batch_sharding = parallel.batch_sharding(t.mesh)
  size = t.config.train.batch_size // t.config.train.microbatches
  with jax.set_mesh(t.mesh):
    jitted = jax.jit(part_gradients, in_shardings=(t.shardings, batch_sharding, parallel.replicated(t.mesh),
                                                   t.stage_shardings))
    return compile_program(jitted.lower(t.state, _with_sharding(data_lib.batch_spec(t.config, size), batch_sharding),
                                        t.key, t.stage_weights))


def compile_sampler(target: Target, num_images: int) -> Program:
  """The sampler as sampling.make_sample_fn builds it for --mode=sample and --mode=eval: the model from its
  inference weights (the state's `ema`) alone."""
  t, stage = target, target.exp.first_stage
  replicated = parallel.replicated(t.mesh)
  with jax.set_mesh(t.mesh):
    sample_fn = sampling.make_sample_fn(t.exp.family, t.exp.model_def, num_images,
                                        first_stage_def=t.exp.first_stage_def, mesh=t.mesh,
                                        weight_shardings=t.shardings["ema"])
    return compile_program(sample_fn.lower(
        t.state["ema"], None if stage is None else _with_sharding(stage.weights, replicated), t.key,
        _with_sharding(t.exp.family.sample_cond_spec(num_images), replicated)))


def report(config, name: str, devices, config_name: str = "") -> dict[str, Any]:
  """Compiles `config` (from the file `config_name`)'s train step and sampler for `devices`, the slice `name`;
  returns the compile report."""
  target = prepare(config, name, devices)
  t, chip = config.train, target.chip
  step = compile_train_step(target)
  part = compile_microbatch(target) if t.microbatches > 1 and step.refusal is None else None
  n = config.eval.batch_size  # the largest batch a config samples at once: --mode=eval's
  sampler = compile_sampler(target, n)

  params = target.abstract_state["params"]
  out = {
      "config": config_name, "topology": name, "chip": chip.name, "chips": len(devices),
      "hosts": hardware.hosts(devices), "slices": parallel.num_slices(devices), "mesh": dict(target.mesh.shape),
      "batch_size": t.batch_size, "microbatches": t.microbatches,
      "params_trainable": train.param_count(params),
      "params_inference": train.param_count(families.restrict(target.abstract_state["ema"], target.exp.param_shapes)),
      "params_context_head": train.param_count(params.get("context", {})),
      "hbm_capacity_bytes": chip.compiler_hbm_bytes,
      "state_bytes_per_chip": shard_bytes(target.state), "batch_bytes_per_chip": shard_bytes(target.batch),
  }
  out.update(_train_figures(step, part, t, chip, out))
  out["sampler"] = _memory_figures(sampler, chip)
  out["sampler"]["batch"] = n
  out["compile_seconds"] = {name: round(p.compile_seconds, 1) for name, p in
                            (("train_step", step), ("microbatch", part), ("sampler", sampler)) if p is not None}
  out["host_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # this process, compiling
  out["versions"] = {"jax": jax.__version__, "libtpu": _version("libtpu")}
  out["libtpu_init_args"] = os.environ.get("LIBTPU_INIT_ARGS", "")  # the TPU compiler's flags, if any
  return out


def _memory_figures(program: Program, chip: hardware.Chip) -> dict[str, Any]:
  if program.refusal is not None:  # the compiler's own sum, arguments included
    return {"fits": False, "hbm_peak_bytes": program.refusal["required_bytes"], "refused": program.refusal}
  return {"fits": program.peak_bytes <= chip.compiler_hbm_bytes, "hbm_peak_bytes": program.peak_bytes,
          "memory": program.memory}


def _train_figures(step: Program, part: Program | None, t, chip: hardware.Chip, known: dict) -> dict[str, Any]:
  out = _memory_figures(step, chip)
  if step.refusal is not None:
    return out
  repeats = t.microbatches - 1 if part is not None else 0
  flops = step.flops + repeats * (part.flops if part else 0.0)
  traffic = step.bytes_accessed + repeats * (part.bytes_accessed if part else 0.0)
  modelled = [p.optimal_seconds for p in (step, part) if p is not None]
  cost_model = None if None in modelled else modelled[0] + repeats * (modelled[1] if part else 0.0)
  roofline = hardware.roofline_seconds(chip, flops, traffic)
  usable = all(hardware.is_finite_positive(s) for s in modelled) and cost_model >= flops / chip.bf16_flops
  seconds = cost_model if usable else roofline
  out.update({
      # hlo_profile counts a loop's body as often as it runs: the step's own count holds every part's collectives.
      "flops_per_step": flops, "bytes_accessed": traffic, "collective_bytes": step.collectives,
      "memory_space_copy_bytes": step.copies,
      "arithmetic_intensity": flops / traffic if traffic else None,
      "ridge_point": chip.ridge_flops_per_byte,
      "cost_model_seconds": cost_model, "roofline_seconds": roofline, "predicted_step_seconds": seconds,
      "time_source": ("cost model" if usable else "roofline (this compiler has no cost model)" if cost_model is None
                      else "roofline (the cost model's answer is not a usable time)"),
      # A roofline time is a lower bound, so the MFU and images/s it gives are upper bounds.
      "upper_bounds": not usable,
      "predicted_mfu": flops / (seconds * chip.bf16_flops) if seconds else None,
      "images_per_second": t.batch_size / seconds if seconds else None,
      "images_per_second_per_chip": t.batch_size / seconds / known["chips"] if seconds else None,
      "hours_to_train_steps": t.steps * seconds / 3600 if seconds else None,
      # The compiler's per-instruction cycle estimates, by operation and by line of ours (the step, or with
      # microbatches one part's forward and backward, which is most of it).
      "where_the_time_goes": (part or step).profile,
  })
  return out


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def write(report_: dict, workdir: str) -> str:
  """<workdir>/compile_<slice>.json, replaced whole (written beside it, then renamed)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"compile_{report_['topology']}.json")
  atomic_files.write_json(path, report_)
  return path


# What lets a v4's cost model answer: the programs compiled without staging in CMEM (docs/scaling.md).
CMEM_OFF = "LIBTPU_INIT_ARGS=--xla_tpu_cmem_memory_space_assignment=false"


def _by_kind(moved: dict[str, int]) -> str:
  return ", ".join(f"{kind} {n / 1e9:.3g} GB" for kind, n in sorted(moved.items()))


def table(r: dict) -> str:
  """The report as aligned lines for a terminal."""
  gib = lambda b: f"{b / hardware.GIB:.2f} GiB"
  rows = [("slice", f"{r['topology']}: {r['chips']} {r['chip']} chips, {r['hosts']} host(s), mesh {r['mesh']}"),
          ("parameters", f"{r['params_trainable']:,} trained, {r['params_inference']:,} at inference"),
          ("batch", f"{r['batch_size']} global" + (f" in {r['microbatches']} microbatches"
                                                   if r["microbatches"] > 1 else "")),
          ("train step memory / chip", f"{gib(r['hbm_peak_bytes'])} of {gib(r['hbm_capacity_bytes'])}: "
                                       + ("fits" if r["fits"] else "DOES NOT FIT"))]
  if "refused" in r:
    rows.append(("compiler", r["refused"]["message"]))
  if "predicted_step_seconds" in r:
    at_most = "at most " if r["upper_bounds"] else ""
    rows += [("FLOPs / chip / step", f"{r['flops_per_step'] / 1e12:.3f} T"),
             ("HBM traffic / chip / step", f"{r['bytes_accessed'] / 1e9:.1f} GB (intensity "
                                           f"{r['arithmetic_intensity']:.0f} FLOP/B, ridge {r['ridge_point']:.0f})"),
             ("collectives / chip / step", _by_kind(r["collective_bytes"]) or "none")]
    copies = r.get("memory_space_copy_bytes") or {}
    if copies:
      rows.append(("memory-space copies / chip / step", _by_kind(copies)))
    rows.append(("predicted step", f"{r['predicted_step_seconds']:.4g} s ({r['time_source']})"))
    if r["upper_bounds"] and "into S(3)" in copies:
      rows.append(("", f"(with {CMEM_OFF} the v4 cost model gives times: docs/scaling.md)"))
    rows += [("predicted MFU", f"{at_most}{100 * r['predicted_mfu']:.1f}% of {r['chip']}'s bf16 peak"),
             ("images / s", f"{at_most}{r['images_per_second']:.1f} ({r['images_per_second_per_chip']:.2f} per chip)"),
             ("train.steps take", f"{'at least ' if r['upper_bounds'] else ''}{r['hours_to_train_steps']:.1f} h")]
    profile = r.get("where_the_time_goes")
    if profile:
      rows += [(f"time by {what}" if i == 0 else "", f"{100 * share:4.1f}%  {name}")
               for what, key in (("operation", "by_op"), ("line", "by_line"))
               for i, (name, share) in enumerate(profile[key][:5])]
      if profile.get("kernels_not_estimated"):
        rows.append(("", f"(not in the shares: {profile['kernels_not_estimated']} runs of Pallas kernels, which the "
                         "compiler does not estimate)"))
      if profile.get("unknown_estimates"):
        rows.append(("", f"(not in the shares: {profile['unknown_estimates']} runs of instructions the compiler "
                         "estimates as unknown)"))
  s = r["sampler"]
  rows.append((f"sampler memory / chip (batch {s['batch']})",
               f"{gib(s['hbm_peak_bytes'])}: " + ("fits" if s["fits"] else "DOES NOT FIT")))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
