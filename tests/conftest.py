"""Shared fixtures: the smoke config (configs/smoke.py), which compiles and trains in seconds on a 2-core CPU."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def tiny_config():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  return smoke.get_config()


@pytest.fixture
def config():
  return tiny_config()


# ------------------------------------------------------------------------------------------------------------------
# Compilation is most of this suite's time (the models are tiny), so every JAX process of a test session, this one
# and every subprocess it starts (which inherit os.environ), shares two settings, made here before jax is imported:
#
# - One persistent compilation cache, a fresh directory per session (xdist workers and children inherit the one
#   the first process made). Its key is a hash of the whole XLA program, compile options, devices, XLA flags and
#   jax version, so a hit loads the executable compiled earlier from the identical program: what a test computes
#   and compares is unchanged, only the time spent compiling goes.
# - LLVM's optimisation off (`--xla_backend_optimization_level=0`): it halves compile time. It acts after XLA's
#   HLO passes, which decide fusion and precision, so the programs compute the same thing; their kernels are only
#   slower, which tiny models do not notice. Timings belong in benchmarks/, which compile as users do.
# ------------------------------------------------------------------------------------------------------------------
_XLA_TEST_FLAG = "--xla_backend_optimization_level=0"


def _share_compilation_settings() -> None:
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="conprediff_jax_test_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ["XLA_FLAGS"] = with_xla_flags(_XLA_TEST_FLAG)


def with_xla_flags(*flags: str) -> str:
  """os.environ's XLA_FLAGS plus `flags` (for a subprocess that needs more, e.g. 8 emulated devices)."""
  present = os.environ.get("XLA_FLAGS", "").split()
  return " ".join(present + [f for f in flags if f not in present])


_share_compilation_settings()
