"""The train-step workloads that several figures share: configs by size and a jitted step on real batches."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from conprediff_jax import train
from conprediff_jax.data.digits import load_digits

SIZES = ("default", "large")


# The UNet every figure in docs/benchmarks.md was measured on: configs/default.py until 2026-12 (1.1M parameters,
# mults (1, 2, 2), batch 64). Pinned here so that those figures stay reproducible when the default config changes.
BENCHMARK_UNET = dict(channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(4,))
BENCHMARK_BATCH = 64


def make_config(size: str = "default", *, weight: float | None = None, solver: str | None = None,
                default_batch: int | None = None):
  """default: 16x16 digits, BENCHMARK_UNET at batch BENCHMARK_BATCH (or `default_batch`), every other setting
  (context head, solver options) as configs/default.py has it.
  large: 32x32, batch 64, the same UNet widths, attention at 8x8."""
  config = default.get_config()
  config.model.update(BENCHMARK_UNET)
  config.data.image_size, config.train.batch_size = 16, BENCHMARK_BATCH
  if size == "large":
    config.data.image_size, config.train.batch_size = 32, 64
    config.model.attention_resolutions = (8,)
  elif size == "default":
    config.train.batch_size = default_batch or config.train.batch_size
  else:
    raise ValueError(f"size must be one of {SIZES}, got {size!r}")
  if weight is not None:
    config.context.weight = weight
  if solver is not None:
    config.context.solver = solver
  return config


def add_config_flags(parser, *, sizes: bool = True) -> None:
  if sizes:
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of default,large")
  parser.add_argument("--default-batch", type=int, default=None,
                      help=f"batch size of the default size (unset: {BENCHMARK_BATCH})")


def parse_sizes(text: str) -> list[str]:
  sizes = [s.strip() for s in text.split(",") if s.strip()]
  unknown = sorted(set(sizes) - set(SIZES))
  if unknown or not sizes:
    raise SystemExit(f"--sizes takes a comma-separated subset of {','.join(SIZES)}, got {text!r}")
  return sizes


def digit_batches(config, count: int = 4, seed: int = 0) -> list[dict[str, jax.Array]]:
  """`count` distinct batches of the embedded digits at the config's size, already on the device."""
  images, _ = load_digits(config.data.image_size)
  size = config.train.batch_size
  order = np.random.default_rng(seed).permutation(len(images))
  picks = [order[(i * size + np.arange(size)) % len(images)] for i in range(count)]
  return [{"image": jnp.asarray(images[p])} for p in picks]


def abstract_inputs(config, exp: train.Experiment) -> tuple[Any, Any, Any]:
  """ShapeDtypeStructs of (state, batch, key): enough to lower and compile the step without running anything."""
  state = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(0))
  s, c = config.data.image_size, config.data.channels
  batch = {"image": jax.ShapeDtypeStruct((config.train.batch_size, s, s, c), jnp.float32)}
  return state, batch, jax.eval_shape(lambda: jax.random.key(0))


def jitted_train_step(exp: train.Experiment):
  """The step exactly as the trainer compiles it on one device: donating its state."""
  return jax.jit(functools.partial(train.train_step, exp), donate_argnums=0)


class TrainStep:
  """A compiled train step with its own state and batches; each call runs one step (state donated)."""

  def __init__(self, config, *, seed: int = 0, batches: list[dict[str, jax.Array]] | None = None):
    self.config = config
    self.exp = train.make_experiment(config)
    self.state = jax.jit(functools.partial(train.init_state, self.exp))(jax.random.key(seed))
    self.batches = batches if batches is not None else digit_batches(config)
    self.key = jax.random.key(seed + 1)
    # A frozen first stage (the token model's tokenizer) rides as its own argument, as in the trainer.
    self.first_stage = None if self.exp.first_stage is None else jax.device_put(self.exp.first_stage.weights)
    self.lowered = jitted_train_step(self.exp).lower(self.state, self.batches[0], self.key, self.first_stage)
    self.compiled = None
    self.calls = 0

  def compile(self) -> "TrainStep":
    self.compiled = self.lowered.compile()
    return self

  def __call__(self):
    if self.compiled is None:
      self.compile()
    batch = self.batches[self.calls % len(self.batches)]
    self.state, metrics = self.compiled(self.state, batch, self.key, self.first_stage)
    self.calls += 1
    return self.state["step"], metrics

  @property
  def images_per_step(self) -> int:
    return int(self.config.train.batch_size)
