"""Orbax checkpoints of the whole train state: async saves every N steps, keep K, restore onto any mesh.

Restores always go through an abstract target that carries the current run's shardings, so a checkpoint written
on one mesh shape restores onto another.
"""

import jax
import orbax.checkpoint as ocp


def open_manager(directory: str, *, max_to_keep: int, save_interval_steps: int = 1) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                         enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(directory, options=options)


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, shardings):
  target = abstract_with_shardings(abstract_state, shardings)
  return manager.restore(step, args=ocp.args.StandardRestore(target))
