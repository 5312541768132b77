"""Shared fixtures: the smoke config (configs/smoke.py), which compiles and trains in seconds on a 2-core CPU."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def tiny_config(family: str = "gaussian", tokenizer_workdir: str = ""):
  """The smallest config of each family: the smoke config, or its tokenizer and token model at the same size.
  "gaussian_dit": the smoke config with the Gaussian family's other backbone, a one-block DiT on 2x2 patches."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  if family == "gaussian":
    return smoke.get_config()
  if family == "gaussian_dit":
    config = smoke.get_config()
    config.model.update(name="dit", patch_size=2, width=16, depth=1, num_heads=2, mlp_ratio=2)
    return config
  module = {"autoencoder": "digits_vq", "kl_autoencoder": "digits_kl", "masked": "digits_tokens"}[family]
  config = __import__(f"configs.{module}", fromlist=["get_config"]).get_config()
  base = smoke.get_config()
  for section in ("data", "train", "checkpoint"):
    config[section].update({k: v for k, v in base[section].items() if k in config[section]})
  config.context.update(base.context)
  config.data.split = "train"
  if family == "kl_autoencoder":
    config.model.update(channels=8, channel_mults=(1,), num_groups=4)  # one level: no downsampling, less to compile
  if family == "autoencoder":
    config.model.update(channels=8, channel_mults=(1, 2), num_groups=4, codebook_size=16, code_dim=4)  # 4x4 tokens
  if family in ("autoencoder", "kl_autoencoder"):
    config.context.weight = 0.0
    config.eval.split, config.eval.num_samples, config.eval.batch_size = "train[:8]", 8, 8
    config.sample.num_images = 8
  else:
    config.first_stage.workdir = tokenizer_workdir
    config.model.update(width=16, depth=1, num_heads=2, mlp_ratio=2)
    config.sample.num_images, config.sample.steps = 8, 2
  return config


def random_lpips_weights(path, net: str = "vgg") -> str:
  """An LPIPS weights file of random draws (the layout convert_lpips_weights writes): for tests that need one."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from conprediff_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  save_file({k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in lpips.expected_tensors(net).items()},
            str(path), metadata={"net": net})
  return str(path)


def make_random_workdir(workdir: str, config=None) -> str:
  """A tiny model's workdir (config.json and one checkpoint), by default a tokenizer: what a token model reads. Its
  weights are random draws in the train state's layout (nothing compiled): the tests that read it need its shapes
  and fixed values, not a trained model."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from conprediff_jax import checkpointing, train  # pylint: disable=g-import-not-at-top
  config = config or tiny_config("autoencoder")
  abstract = jax.eval_shape(functools.partial(train.init_state, train.make_experiment(config)), jax.random.key(0))
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(x.dtype), abstract)
  manager = checkpointing.open_manager(os.path.join(workdir, "checkpoints"), max_to_keep=1)
  checkpointing.save(manager, 1, state, force=True)
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort())
  return workdir


@pytest.fixture
def config():
  return tiny_config()


@pytest.fixture(scope="session")
def tokenizer_workdir(tmp_path_factory):
  return make_random_workdir(str(tmp_path_factory.mktemp("tokenizer")))


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


def _skip_tracer_origin_messages() -> None:
  """Flax's Rngs update a counter inside every traced model build, and each update makes jax describe the
  counter's origin for an error message that flax catches and drops: a walk over the whole jaxpr per random draw,
  about half of each tiny model's trace time. The message is for humans; tests keep the description empty."""
  from jax._src.interpreters import partial_eval  # pylint: disable=g-import-not-at-top
  partial_eval.DynamicJaxprTracer._origin_msg = lambda self: ""  # pylint: disable=protected-access


_skip_tracer_origin_messages()
