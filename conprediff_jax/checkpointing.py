"""Orbax checkpoints of the whole train state: async saves every N steps, keep K, restore onto any mesh.

Restores always go through an abstract target that carries the current run's shardings, so a checkpoint written
on one mesh shape restores onto another.
"""

import contextlib
import os
import shutil

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from conprediff_jax import atomic_files


class Mismatch(ValueError):
  """A checkpoint that reads but holds another model than the config builds."""


def open_manager(directory: str, *, max_to_keep: int, save_interval_steps: int = 1) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                         enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)  # Orbax writes only absolute paths


def open_best_manager(directory: str, *, metric: str, lower_is_better: bool) -> ocp.CheckpointManager:
  """Keeps the single best checkpoint by an eval metric; Orbax stores the metric with it, so restarts remember."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda metrics: metrics[metric],
                                         best_mode="min" if lower_is_better else "max",
                                         enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False, metrics=None) -> bool:
  """Starts an asynchronous save of `state` at `step`; a save that fails (a full disk: now, or the previous one in
  the background) is an atomic_files.WriteError naming the checkpoint folder. The checkpoints before it are whole."""
  with _write_errors(os.path.join(str(manager.directory), str(step))):
    return manager.save(step, args=ocp.args.StandardSave(state), force=force, metrics=metrics,
                        custom_metadata={FINGERPRINTS: fingerprints(state)})


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the saves in flight; a failed one as in `save`."""
  with _write_errors(str(manager.directory)):
    manager.wait_until_finished()


@contextlib.contextmanager
def _write_errors(path: str):
  """An error caused by an OSError (Orbax wraps what its writer threads raise) as a WriteError naming `path`."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if atomic_files.os_error_in(e) is None:
      raise
    raise atomic_files.write_failed(path, e) from None


@contextlib.contextmanager
def finishing(*managers):
  """A block after which, if it raises, the saves still in flight are waited for (their own failures aside), so that
  a run stopped by an error leaves its earlier checkpoints whole."""
  try:
    yield
  except BaseException:
    for manager in managers:
      if manager is not None:
        try:
          manager.wait_until_finished()
        except Exception:  # pylint: disable=broad-except  # the error being raised is the one to report
          pass
    raise


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, shardings):
  target = abstract_with_shardings(abstract_state, shardings)
  return manager.restore(step, args=ocp.args.StandardRestore(target))


# A flipped bit in a checkpoint's data files can restore without an error, as a wrong number (TensorStore checks no
# sum of uncompressed chunks): every save stores a fingerprint of each array beside it, and restore_latest checks it.
FINGERPRINTS = "fingerprints"


def _key(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


@jax.jit
def _fingerprint_arrays(leaves):
  def one(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    width = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)  # 8 bytes: a trailing axis of 2
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    index, stride = jnp.zeros(bits.shape, jnp.uint32), 1
    for axis in reversed(range(bits.ndim)):  # the flat position, without reshaping a sharded array
      index += jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2**32)
      stride *= bits.shape[axis]
    # An odd weight per position, so that any one flipped bit changes the wrapping sum, and so do swapped values.
    return jnp.sum(bits * (index * jnp.uint32(2654435762) + jnp.uint32(1)), dtype=jnp.uint32)
  return [one(x) for x in leaves]


def fingerprints(tree) -> dict[str, int]:
  """Per array of `tree` (by its path), a 32-bit position-weighted sum of its bits."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  values = jax.device_get(_fingerprint_arrays([x for _, x in flat]))
  return {_key(path): int(v) for (path, _), v in zip(flat, values)}


def verify(manager: ocp.CheckpointManager, step: int, tree, prefix: str = "") -> None:
  """Raises ValueError unless the arrays of `tree`, restored from `step`, match the fingerprints saved with them
  (under `prefix`); a checkpoint saved before fingerprints existed, or whose step metadata is gone, is not checked."""
  try:
    saved = (manager.metadata(step).custom_metadata or {}).get(FINGERPRINTS)
  except Exception:  # pylint: disable=broad-except  # unreadable step metadata: nothing to check against
    saved = None
  if saved:
    got = fingerprints(tree)
    wrong = [key for key, value in got.items() if saved.get(prefix + key) != value]
    if wrong:
      raise ValueError(f"{len(wrong)} array(s) differ from the fingerprints saved with them, e.g. {wrong[0]} "
                       "(damaged data files)")


def quarantine(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves an unreadable step out of the manager's sight (never deletes it) and returns where it went."""
  source = os.path.join(str(manager.directory), str(step))
  target = os.path.join(os.path.dirname(str(manager.directory).rstrip("/")), "corrupt_checkpoints", str(step))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      shutil.rmtree(target)  # an older quarantined copy of the same step number
    shutil.move(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"quarantined checkpoint {step}")  # moved before any process looks again
  manager.reload()
  return target


def _on_every_process(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def restore_latest(manager: ocp.CheckpointManager, abstract_state, shardings, *, step: int | None = None,
                   ema_only: bool = False):
  """(step, state) of the newest readable checkpoint (or of `step` alone), or None when there is none.

  A step that fails to restore (truncated files, flipped bytes, a half-written directory) is moved to
  `corrupt_checkpoints/` with a warning naming it, and the next older one is tried. Nothing is deleted, so the last
  good checkpoint always survives, and a later save of the same step number cannot collide. With `ema_only`,
  `abstract_state` is the EMA weights' and only they are read (restore_ema). On several processes they agree: a
  step is used only if it read on every one, and only process 0 moves one aside.
  """
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  for candidate in steps:
    error = None
    try:
      state = (restore_ema if ema_only else restore)(manager, candidate, abstract_state, shardings)
    except Mismatch:
      raise  # a readable checkpoint of another model: the config is wrong, not the files
    except Exception as e:  # pylint: disable=broad-except  # any unreadable step: fall back to an older one
      error = e
    if _on_every_process(error is None):  # every process is here: the fingerprints' computation may span them
      try:
        verify(manager, candidate, state, prefix="ema/" if ema_only else "")
      except ValueError as e:
        error = e
      if _on_every_process(error is None):
        return candidate, state
    if candidate not in manager.all_steps():  # asked for a step that is not there
      raise FileNotFoundError(f"{manager.directory}: no checkpoint at step {candidate} (there are "
                              f"{sorted(manager.all_steps())})") from None
    moved = quarantine(manager, candidate)
    message = ("it read here, not on another process" if error is None else
               str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__)
    logging.warning("checkpoint step %d is unreadable (%s); moved it to %s", candidate, message, moved)
  return None


def restore_ema(manager: ocp.CheckpointManager, step: int, abstract_ema, ema_shardings):
  """Restores only `state["ema"]` of the train state saved at `step`: the denoiser's averaged parameters.

  Sampling, evaluation and export need nothing else, so they need not know the optimiser state or the
  training-only context head's structure. Orbax binds one handler per item to a manager, and `manager` (which
  saves with StandardSave) refuses the PyTreeRestore a partial read needs, so the read goes through a second,
  read-only manager on the same directory.
  """
  manager.wait_until_finished()  # the step may still be in flight
  paths = lambda tree: {_key(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
  reader = ocp.CheckpointManager(
      manager.directory, item_handlers=ocp.PyTreeCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False))
  try:
    stored = reader.item_metadata(step)
    if stored is None:  # its tree metadata is missing or unreadable: a damaged checkpoint, not another model's
      raise ValueError(f"checkpoint {manager.directory}/{step} has no readable tree metadata")
    if "ema" not in stored.tree:
      raise Mismatch(f"checkpoint {manager.directory}/{step} holds no 'ema' subtree")
    # partial_restore silently drops stored keys missing from the target and returns the target's abstract leaves
    # for keys missing on disk, so the two key sets are compared first.
    want, have = paths(abstract_ema), paths(stored.tree["ema"])
    if want != have:
      raise Mismatch(f"the EMA parameters at step {step} do not fit the model the config builds: "
                       f"missing {sorted(want - have)[:8]}, unexpected {sorted(have - want)[:8]}")
    target = {"ema": abstract_with_shardings(abstract_ema, ema_shardings)}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    return reader.restore(step, args=args)["ema"]
  finally:
    reader.close()
