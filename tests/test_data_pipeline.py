"""Pipeline: batches are a function of (seed, step), split disjointly over hosts, sharded on devices."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from PIL import Image

from conprediff_jax.data import ArraySource, Batches, FolderSource, make_source
from tests.conftest import with_xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def indexed_source(n: int) -> ArraySource:
  """Example i has every pixel equal to i, so a batch says which examples it holds."""
  images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1))
  return ArraySource(images, np.arange(n) % 3)


def ids(batch) -> np.ndarray:
  return np.asarray(batch["image"])[:, 0, 0, 0].astype(np.int64)


def batch_sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))


def test_same_seed_and_step_same_batch_other_seed_differs():
  source = indexed_source(50)
  with Batches(source, 8, 3, None) as a, Batches(source, 8, 3, None) as b, Batches(source, 8, 4, None) as c:
    for step in (0, 1, 17):
      np.testing.assert_array_equal(ids(a.host_batch(step)), ids(b.host_batch(step)))
    assert not np.array_equal(ids(a.host_batch(0)), ids(c.host_batch(0)))
    assert not np.array_equal(ids(a.host_batch(0)), ids(a.host_batch(1)))
    # Labels travel with their images.
    batch = a.host_batch(5)
    np.testing.assert_array_equal(batch["label"], ids(batch) % 3)


def test_resume_matches_uninterrupted_run():
  source = indexed_source(30)
  with Batches(source, 4, 0, batch_sharding()) as run:
    uninterrupted = [ids(run.get(step)) for step in range(12)]  # prefetch on
  with Batches(source, 4, 0, batch_sharding()) as resumed:
    for step in (7, 8, 11, 3):
      np.testing.assert_array_equal(ids(resumed.get(step)), uninterrupted[step])


def test_every_example_once_per_epoch():
  n, batch_size = 10, 4  # epochs straddle batches
  with Batches(indexed_source(n), batch_size, 1, None) as batches:
    stream = np.concatenate([ids(batches.host_batch(step)) for step in range(10)])
  epochs = stream[: 4 * n].reshape(4, n)
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch


def test_hosts_read_disjoint_rows_that_make_the_global_batch():
  with Batches(indexed_source(100), 8, 5, None) as batches:
    for step in (0, 9):
      whole = ids(batches.host_batch(step, process_index=0, process_count=1))
      host0 = ids(batches.host_batch(step, process_index=0, process_count=2))
      host1 = ids(batches.host_batch(step, process_index=1, process_count=2))
      assert len(host0) == len(host1) == 4
      assert not set(host0) & set(host1)
      np.testing.assert_array_equal(np.concatenate([host0, host1]), whole)
  # A Batches built as host 1 of 2 reads the same rows.
  with Batches(indexed_source(100), 8, 5, None, process_index=1, process_count=2) as host:
    np.testing.assert_array_equal(ids(host.host_batch(9)), host1)
    with pytest.raises(ValueError, match="real process layout"):
      host.get(0)


def test_batch_size_not_divisible_by_processes():
  with pytest.raises(ValueError, match="not divisible by the 3 processes") as excinfo:
    Batches(indexed_source(10), 8, 0, None, process_index=0, process_count=3)
  assert "\n" not in str(excinfo.value)


def test_sharded_get_on_one_device():
  sharding = batch_sharding()
  with Batches(indexed_source(20), 6, 2, sharding) as batches:
    batch = batches.get(4)
    host = batches.host_batch(4)
  assert batch["image"].shape == (6, 2, 2, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
  assert batch["image"].sharding == sharding and batch["label"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(batch["image"]), host["image"])
  np.testing.assert_array_equal(np.asarray(batch["label"]), host["label"])


def test_sharded_get_on_eight_devices():
  """8 emulated devices in a fresh process: every device holds its own rows of the global batch."""
  code = textwrap.dedent("""
      import jax, numpy as np
      from conprediff_jax.data import ArraySource, Batches
      n = 40
      source = ArraySource(np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1)),
                           np.zeros(n, np.int32))
      mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
      sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
      with Batches(source, 16, 0, sharding) as batches:
        batch, host = batches.get(3), batches.host_batch(3)
      np.testing.assert_array_equal(np.asarray(batch["image"]), host["image"])
      assert len(batch["image"].addressable_shards) == 8
      for shard in batch["image"].addressable_shards:
        assert shard.data.shape[0] == 2
        np.testing.assert_array_equal(np.asarray(shard.data), host["image"][shard.index[0]])
      print("ok")
  """)
  env = {**os.environ, "XLA_FLAGS": with_xla_flags("--xla_force_host_platform_device_count=8"), "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(REPO)}
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_folder_source_reads_on_threads(tmp_path):
  for i in range(5):
    Image.fromarray(np.full((6, 6), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
  source = FolderSource(tmp_path, image_size=3, channels=1)
  with Batches(source, 4, 0, batch_sharding(), num_threads=3) as batches:
    batch = batches.get(2)
    expected = source.get_batch(batches.indices(2))
  np.testing.assert_array_equal(np.asarray(batch["image"]), expected["image"])


def test_digits_batches_at_the_default_size():
  # (How fast this is belongs in a benchmark, not in a pass/fail threshold here.)
  source = make_source(ml_collections.ConfigDict(dict(
      name="digits", tfds_name="", data_dir="", split="train", image_size=16, channels=1, num_classes=10,
      strict=False)))
  with Batches(source, 128, 0, None) as batches:
    batch = batches.host_batch(5)
    expected = source.get_batch(batches.indices(5))
  assert batch["image"].shape == (128, 16, 16, 1) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
  np.testing.assert_array_equal(batch["image"], expected["image"])
  np.testing.assert_array_equal(batch["label"], expected["label"])
