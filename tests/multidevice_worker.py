"""Run by test_families.py in a subprocess with 8 emulated CPU devices; prints one JSON line of results per check:
`RESULT <i> <json>` for the i-th check asked for (counting from 0), or `ERROR <i> <traceback as JSON>`.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_worker.py \
        sharded_step:gaussian:0.1 checkpoint_roundtrip:masked:<tmpdir> sample:masked:<tmpdir>

Every check names a family (tests/conftest.py tiny_config) and runs in this one process (one JAX start-up); each
(model, mesh) init is compiled once and shared by the checks that need it. A check that raises prints an ERROR line
instead of its RESULT, and the others still run.
"""

import functools
import json
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from conprediff_jax import checkpointing, parallel, sampling, train  # pylint: disable=g-import-not-at-top
from conprediff_jax.data.digits import load_digits  # pylint: disable=g-import-not-at-top
from tests.conftest import make_random_workdir, tiny_config  # pylint: disable=g-import-not-at-top

parallel.MIN_SHARDED_SIZE = 0  # shard even the tiny test model's arrays, so fsdp is really exercised

_EXPERIMENTS = {}  # (family, context weight) -> Experiment (kept alive, so its id keys _INITS)
_INITS = {}  # (id(experiment), mesh) -> jitted init with that mesh's out_shardings


@functools.cache
def family_config(family: str):
  tokenizer = make_random_workdir(tempfile.mkdtemp()) if family == "masked" else ""
  return tiny_config(family, tokenizer)


def experiment(family: str, context_weight: float | None = None) -> train.Experiment:
  config = family_config(family).copy_and_resolve_references()
  if context_weight is not None:
    config.context.weight = context_weight
  key = (family, config.context.weight)
  if key not in _EXPERIMENTS:
    _EXPERIMENTS[key] = train.make_experiment(config)
  return _EXPERIMENTS[key]


def state_shardings(exp, mesh, seed=0):
  abstract = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(seed))
  return abstract, parallel.state_shardings(mesh, abstract)


def make_state(exp, mesh, seed=0):
  abstract, shardings = state_shardings(exp, mesh, seed)
  if (id(exp), mesh) not in _INITS:  # the seed is an argument: one compile serves every seed
    _INITS[id(exp), mesh] = jax.jit(functools.partial(train.init_state, exp), out_shardings=shardings)
  with jax.set_mesh(mesh):
    state = _INITS[id(exp), mesh](jax.random.key(seed))
  return state, abstract, shardings


def run_steps(exp, mesh, batch, state=None, steps=2):
  """`steps` train steps on `mesh` from `state` (by default a fresh init on `mesh`)."""
  if state is None:
    state, _, shardings = make_state(exp, mesh)
  else:
    _, shardings = state_shardings(exp, mesh)
  bsh = parallel.batch_sharding(mesh)
  batch = jax.device_put(batch, bsh)
  first_stage = sampling.put_first_stage(exp.first_stage, mesh)
  stage_shardings = None if first_stage is None else jax.tree.map(lambda x: x.sharding, first_stage)
  with jax.set_mesh(mesh):
    step_fn = jax.jit(train.sharded_train_step(exp, shardings, stage_shardings),
                      in_shardings=(shardings, bsh, None, None), out_shardings=(shardings, None))
    losses = []
    for _ in range(steps):
      state, metrics = step_fn(state, batch, jax.random.key(1), first_stage)
      losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return losses, jax.device_get(state), state


def sharded_step(family: str, context_weight: float, eight=None):
  """Two steps on 8 devices (by default a (2, 4) data x fsdp mesh) against the same two on one device."""
  exp = experiment(family, context_weight)
  x, y = load_digits(8)
  batch = {"image": x[:16], "label": y[:16]}
  one = parallel.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  eight = eight or parallel.make_mesh((2, 4), ("data", "fsdp"))
  # Initialised once, on the 8-device mesh (the init compile that checkpoint_roundtrip shares); the 1-device run
  # starts from a copy of the same values, so the two runs differ in the step's sharding alone.
  init8 = make_state(exp, eight)[0]
  init = jax.device_get(init8)
  init_one = jax.device_put(init, state_shardings(exp, one)[1])
  losses1, state1, _ = run_steps(exp, one, batch, init_one)
  losses8, state8, sharded = run_steps(exp, eight, batch, init8)  # the step does not donate: init8 stays valid
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
  diff = lambda a, b: jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded)}
  return {"losses1": losses1, "losses8": losses8,
          "param_diff_norm": norm(diff(state1["params"], state8["params"])),
          "param_update_norm": norm(diff(state1["params"], init["params"])),
          "num_devices": jax.device_count(), "specs": sorted(specs)}


def checkpoint_roundtrip(family: str, workdir: str):
  exp = experiment(family)
  save_mesh = parallel.make_mesh((2, 4), ("data", "fsdp"))
  state, abstract, _ = make_state(exp, save_mesh, seed=3)
  tmpdir = os.path.join(workdir, "checkpoints")
  manager = checkpointing.open_manager(tmpdir, max_to_keep=2)
  checkpointing.save(manager, 7, state)
  manager.wait_until_finished()
  expected = jax.device_get(state)
  results = {}
  for shape in [(2, 4), (8, 1), (1, 8), (1, 1)]:
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = parallel.make_mesh(shape, ("data", "fsdp"), devices=devices)
    shardings = parallel.state_shardings(mesh, abstract)
    restored = checkpointing.restore(checkpointing.open_manager(tmpdir, max_to_keep=2), 7, abstract, shardings)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), expected, jax.device_get(restored))
    on_mesh = all(x.sharding == s for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)))
    results[str(shape)] = {"equal": all(jax.tree.leaves(same)), "on_target_shardings": on_mesh}
  return results


def sample(family: str, workdir: str):
  """`--mode=sample` on the 8-device mesh from the checkpoint checkpoint_roundtrip wrote: inference weights only."""
  images = train.sample(family_config(family), workdir)
  return {"shape": list(images.shape), "dtype": str(images.dtype), "distinct_values": int(len(np.unique(images))),
          "png": os.path.exists(os.path.join(workdir, "samples.png"))}


def model_parallel_step(family: str, weight: str):
  """sharded_step on a (2, 2, 2) data x fsdp x model mesh, with every array large enough to be split (the tiny
  model's would otherwise all stay replicated), so the tensor-parallel rule really runs."""
  old, parallel.MIN_SHARDED_SIZE = parallel.MIN_SHARDED_SIZE, 0
  try:
    return sharded_step(family, float(weight), parallel.make_mesh((2, 2, 2), ("data", "fsdp", "model")))
  finally:
    parallel.MIN_SHARDED_SIZE = old


CHECKS = {"sharded_step": lambda family, weight: sharded_step(family, float(weight)),
          "model_parallel_step": model_parallel_step,
          "checkpoint_roundtrip": checkpoint_roundtrip, "sample": sample}


if __name__ == "__main__":
  for index, request in enumerate(sys.argv[1:]):  # output lines name the check by its position in argv
    name, family, arg = request.split(":", 2)
    try:
      out = CHECKS[name](family, arg)
    except Exception:  # pylint: disable=broad-except  # reported to the test that asked for this check
      print(f"ERROR {index} " + json.dumps(traceback.format_exc()), flush=True)
    else:
      print(f"RESULT {index} " + json.dumps(out), flush=True)
