"""Per-device memory of a training run, logged as it starts: what the sharded state holds on one device, and what
XLA's compiled train step adds to it (activations, gradients, scratch), beside the device's capacity when the
backend reports one (GPU and TPU; not the CPU)."""

import collections

import jax


def bytes_per_device(tree) -> int:
  """The bytes of `tree`'s shards on the fullest of this process's devices."""
  per_device = collections.Counter()
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      per_device[shard.device] += shard.data.nbytes
  return max(per_device.values(), default=0)


def report(state: dict, compiled) -> str:
  """One line: the state's parts per device, the compiled step's temporaries, and the device's limit."""
  parts = {"parameters": state["params"], "EMA weights": state["ema"], "optimiser state": state["opt_state"]}
  sizes = [f"{name} {_mib(bytes_per_device(tree))}" for name, tree in parts.items()]
  stats = compiled.memory_analysis()
  if stats is not None:  # per device: the step's arguments (state, batch) and its temporaries
    sizes.append(f"train step: arguments {_mib(stats.argument_size_in_bytes)}, "
                 f"activations and other temporaries {_mib(stats.temp_size_in_bytes)}")
  limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  if limit:
    sizes.append(f"device capacity {_mib(limit)}")
  return "; ".join(sizes)


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"
