"""Global batches as a pure function of (seed, step), read per host and assembled into sharded arrays.

Order: the example at row r of step k is `order[k * B + r]`, where `order` is grain's index-shuffled
`range(len(source))` repeated forever with a fresh permutation per epoch (seed + epoch). Nothing else
is stateful, so a run resumed at step k sees exactly the batches an uninterrupted run would, on any
number of hosts, and every example appears once per epoch of `len(source)` consecutive positions.

Hosts: each process reads only the rows of the global batch that its devices hold under `sharding`
(contiguous blocks of B / process_count rows for the usual batch sharding) and
`jax.make_array_from_process_local_data` stitches them into one global array.
"""

import concurrent.futures
import threading

import grain
import jax
import numpy as np

from conprediff_jax.data.source import Batch, Source


def _sharded_rows(sharding: jax.sharding.Sharding, global_batch_size: int) -> np.ndarray:
  """Global batch rows this process's devices hold, in the order make_array_from_process_local_data wants."""
  index_map = sharding.addressable_devices_indices_map((global_batch_size,))
  blocks = sorted({s[0].indices(global_batch_size)[:2] for s in index_map.values()})
  return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def batch_spec(config, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes of a batch of `batch_size` examples of `config`'s data (what `Batches.get` returns), without opening
  the data: image and label, and the text (data/text.py) at the prompt length the model reads."""
  d, length = config.data, config.get("text", {}).get("max_length", 0)
  spec = {"image": ((d.image_size, d.image_size, d.channels), np.float32), "label": ((), np.int32)}
  if d.get("captions", ""):
    spec["text_tokens"] = ((length,), np.int32)
  if d.get("text_embeddings_file", ""):
    spec.update(text_embedding=((length, config.text.embedding_dim), np.float32), text_mask=((length,), np.bool_))
  return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype) for k, (shape, dtype) in spec.items()}


class Batches:
  """Deterministic, resumable global batches of a random-access source.

  `get(step)` returns {"image": [B, S, S, C] float32, "label": [B] int32} as global jax.Arrays with
  `sharding`; `host_batch(step)` returns this host's numpy rows. With `prefetch`, `get(step)` starts
  reading step + 1 on a background thread; batches do not depend on whether or when that happens.
  One consumer at a time; call `close()` (or use `with`) to stop the threads.
  """

  def __init__(self, source: Source, global_batch_size: int, seed: int,
               sharding: jax.sharding.Sharding | None, process_index: int | None = None,
               process_count: int | None = None, *, prefetch: bool = True, num_threads: int = 4):
    if global_batch_size < 1:
      raise ValueError(f"global batch size (config.train.batch_size) must be positive, got {global_batch_size}")
    if len(source) == 0:
      raise ValueError("the data source is empty; check config.data")
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.sharding = sharding
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    self._check_layout(self.process_index, self.process_count)
    # Seeds must fit 32 bits for grain; fold rather than reject so any config.seed works.
    self._order = grain.MapDataset.range(len(source)).shuffle(seed=self.seed % 2**32).repeat()
    self._own_rows = self._rows(self.process_index, self.process_count)
    self._prefetch = prefetch
    self._reader = concurrent.futures.ThreadPoolExecutor(max(1, num_threads), "data-read")
    self._prefetcher = concurrent.futures.ThreadPoolExecutor(1, "data-prefetch")
    self._pending: tuple[int, concurrent.futures.Future[Batch]] | None = None
    self._lock = threading.Lock()

  def _check_layout(self, process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if self.global_batch_size % process_count:
      raise ValueError(f"global batch size {self.global_batch_size} (config.train.batch_size) is not divisible "
                       f"by the {process_count} processes; use a multiple of {process_count}")

  def _is_real_layout(self, process_index: int, process_count: int) -> bool:
    return (process_index, process_count) == (jax.process_index(), jax.process_count())

  def _rows(self, process_index: int, process_count: int) -> np.ndarray:
    """This host's rows: what the sharding assigns for the real process, else the standard block."""
    if self.sharding is not None and self._is_real_layout(process_index, process_count):
      return _sharded_rows(self.sharding, self.global_batch_size)
    per_host = self.global_batch_size // process_count
    return np.arange(process_index * per_host, (process_index + 1) * per_host)

  def indices(self, step: int, process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
    """Source indices of this host's rows at `step` (pass process_* to simulate another host)."""
    rows = self._own_rows
    if process_index is not None or process_count is not None:
      process_index = self.process_index if process_index is None else int(process_index)
      process_count = self.process_count if process_count is None else int(process_count)
      self._check_layout(process_index, process_count)
      rows = self._rows(process_index, process_count)
    start = int(step) * self.global_batch_size
    return np.fromiter((self._order[start + int(r)] for r in rows), dtype=np.int64, count=len(rows))

  def host_batch(self, step: int, process_index: int | None = None,
                 process_count: int | None = None) -> Batch:
    """This host's part of the global batch at `step`, as numpy arrays."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    return self.source.get_batch(self.indices(step, process_index, process_count), self._reader.map)

  def _host_batch_for_get(self, step: int) -> Batch:
    with self._lock:
      pending, self._pending = self._pending, None
    if pending is not None and pending[0] == step:
      return pending[1].result()
    return self.host_batch(step)

  def get(self, step: int) -> dict[str, jax.Array]:
    """The global batch at `step`, sharded over the batch dimension with `sharding`."""
    if not self._is_real_layout(self.process_index, self.process_count):
      raise ValueError(f"get() needs the real process layout ({jax.process_index()} of {jax.process_count()}), "
                       f"got {self.process_index} of {self.process_count}; use host_batch() to simulate hosts")
    host = self._host_batch_for_get(step)
    if self._prefetch:
      with self._lock:
        self._pending = (step + 1, self._prefetcher.submit(self.host_batch, step + 1))
    if self.sharding is None:
      return {k: jax.numpy.asarray(v) for k, v in host.items()}
    return {
        k: jax.make_array_from_process_local_data(self.sharding, v, (self.global_batch_size,) + v.shape[1:])
        for k, v in host.items()
    }

  def close(self) -> None:
    self._prefetcher.shutdown(wait=True, cancel_futures=True)
    self._reader.shutdown(wait=True, cancel_futures=True)

  def __enter__(self) -> "Batches":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
