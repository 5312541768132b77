"""Run by test_sharding.py in a subprocess with 8 emulated CPU devices; prints one JSON line of results per check:
`RESULT <i> <json>` for the i-th check asked for (counting from 0), or `ERROR <i> <traceback as JSON>`.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_worker.py \
        sharded_step:0.0 sharded_step:0.1 checkpoint_roundtrip:<tmpdir>

Every check runs in this one process (one JAX start-up), and each (model, mesh) init is compiled once and shared by
the checks that need it. A check that raises prints an ERROR line instead of its RESULT, and the others still run.
"""

import functools
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from conprediff_jax import checkpointing, parallel, train  # pylint: disable=g-import-not-at-top
from conprediff_jax.data.digits import load_digits  # pylint: disable=g-import-not-at-top
from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top

parallel.MIN_SHARDED_SIZE = 0  # shard even the tiny test model's arrays, so fsdp is really exercised

_EXPERIMENTS = {}  # context weight -> Experiment (kept alive, so its id keys _INITS)
_INITS = {}  # (id(experiment), mesh) -> jitted init with that mesh's out_shardings


def experiment(context_weight: float) -> train.Experiment:
  if context_weight not in _EXPERIMENTS:
    config = tiny_config()
    config.context.weight = context_weight
    _EXPERIMENTS[context_weight] = train.make_experiment(config)
  return _EXPERIMENTS[context_weight]


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
  with jax.set_mesh(mesh):
    step_fn = jax.jit(functools.partial(train.train_step, exp), in_shardings=(shardings, bsh, None),
                      out_shardings=(shardings, None))
    losses = []
    for _ in range(steps):
      state, metrics = step_fn(state, batch, jax.random.key(1))
      losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return losses, jax.device_get(state), state


def sharded_step(context_weight: float):
  exp = experiment(context_weight)
  x, y = load_digits(8)
  batch = {"image": x[:16], "label": y[:16]}
  one = parallel.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  eight = parallel.make_mesh((2, 4), ("data", "fsdp"))
  init_one = make_state(exp, one)[0]
  init = jax.device_get(init_one)
  losses1, state1, _ = run_steps(exp, one, batch, init_one)  # the step does not donate: init_one stays valid
  losses8, state8, sharded = run_steps(exp, eight, batch)  # initialised on the 8-device mesh itself
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
  diff = lambda a, b: jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded)}
  return {"losses1": losses1, "losses8": losses8,
          "param_diff_norm": norm(diff(state1["params"], state8["params"])),
          "param_update_norm": norm(diff(state1["params"], init["params"])),
          "num_devices": jax.device_count(), "specs": sorted(specs)}


def checkpoint_roundtrip(tmpdir: str):
  exp = experiment(tiny_config().context.weight)
  save_mesh = parallel.make_mesh((2, 4), ("data", "fsdp"))
  state, abstract, _ = make_state(exp, save_mesh, seed=3)
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


CHECKS = {"sharded_step": lambda arg: sharded_step(float(arg)), "checkpoint_roundtrip": checkpoint_roundtrip}


if __name__ == "__main__":
  for index, request in enumerate(sys.argv[1:]):  # output lines name the check by its position in argv
    name, _, arg = request.partition(":")
    try:
      out = CHECKS[name](arg)
    except Exception:  # pylint: disable=broad-except  # reported to the test that asked for this check
      print(f"ERROR {index} " + json.dumps(traceback.format_exc()), flush=True)
    else:
      print(f"RESULT {index} " + json.dumps(out), flush=True)
