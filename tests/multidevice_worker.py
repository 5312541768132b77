"""Run by test_sharding.py in a subprocess with 8 emulated CPU devices; prints one JSON line of results.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_worker.py <check> <tmpdir>
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from conprediff_jax import checkpointing, parallel, train  # pylint: disable=g-import-not-at-top
from conprediff_jax.data.digits import load_digits  # pylint: disable=g-import-not-at-top
from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top

parallel.MIN_SHARDED_SIZE = 0  # shard even the tiny test model's arrays, so fsdp is really exercised


def make_state(exp, mesh, seed=0):
  abstract = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(seed))
  shardings = parallel.state_shardings(mesh, abstract)
  with jax.set_mesh(mesh):
    state = jax.jit(functools.partial(train.init_state, exp), out_shardings=shardings)(jax.random.key(seed))
  return state, abstract, shardings


def run_steps(exp, mesh, batch, steps=2):
  state, _, shardings = make_state(exp, mesh)
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
  config = tiny_config()
  config.context.weight = context_weight
  exp = train.make_experiment(config)
  x, y = load_digits(8)
  batch = {"image": x[:16], "label": y[:16]}
  one = parallel.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  eight = parallel.make_mesh((2, 4), ("data", "fsdp"))
  init = jax.device_get(make_state(exp, one)[0])
  losses1, state1, _ = run_steps(exp, one, batch)
  losses8, state8, sharded = run_steps(exp, eight, batch)
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
  diff = lambda a, b: jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded)}
  return {"losses1": losses1, "losses8": losses8,
          "param_diff_norm": norm(diff(state1["params"], state8["params"])),
          "param_update_norm": norm(diff(state1["params"], init["params"])),
          "num_devices": jax.device_count(), "specs": sorted(specs)}


def checkpoint_roundtrip(tmpdir: str):
  config = tiny_config()
  exp = train.make_experiment(config)
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


if __name__ == "__main__":
  check = sys.argv[1]
  if check == "sharded_step":
    out = sharded_step(float(sys.argv[2]))
  else:
    out = checkpoint_roundtrip(sys.argv[2])
  print("RESULT " + json.dumps(out))
