"""Shared fixtures: the smoke config (configs/smoke.py), which compiles and trains in seconds on a 2-core CPU."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def tiny_config():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  return smoke.get_config()


@pytest.fixture
def config():
  return tiny_config()


# For end-to-end runs whose subject is not the model (multi-host plumbing, the ablation command): the smoke config
# with a one-level UNet (no down/upsampling; attention only in the middle block). Measured on a 2-core CPU, it
# compiles (init + train step + sampler) in ~60% of the smoke UNet's CPU time, and the two-process launch of
# test_multiprocess.py finishes in about half the wall time.
SMALL_UNET_FLAGS = ("--config.model.channel_mults=(1,)", "--config.model.attention_resolutions=()")


# ------------------------------------------------------------------------------------------------------------------
# A persistent JAX compilation cache for this pytest session only (a fresh directory under pytest's tmp dir).
#
# Compiling the smoke model's init and train step costs tens of seconds on a busy 2-core CPU, and the end-to-end
# tests compile the very same programs again in every process they start. Opted into per test: subprocesses get
# `compile_cache_env` in their environment, in-process code the `in_process_compile_cache` fixture. The cache key
# is a hash of the whole XLA program, compile options, devices, XLA flags and jax version, so a hit loads the
# executable compiled earlier from the identical program: what a test computes and compares is unchanged, only
# the time spent compiling goes.
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def compile_cache_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("jax_compilation_cache"))


@pytest.fixture(scope="session")
def compile_cache_env(compile_cache_dir) -> dict[str, str]:
  """Environment variables that make a child JAX process read and write the session's compilation cache."""
  return {"JAX_COMPILATION_CACHE_DIR": compile_cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture
def in_process_compile_cache(compile_cache_dir):
  """The session's compilation cache for this test's own (in-process) compiles; off again afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {name: getattr(jax.config, name) for name in names}
  compilation_cache.reset_cache()  # the cache object is built once, from the settings at the next compile
  jax.config.update("jax_compilation_cache_dir", compile_cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield compile_cache_dir
  compilation_cache.reset_cache()
  for name, value in before.items():
    jax.config.update(name, value)
