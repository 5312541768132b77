"""The profile benchmark measures what it says: its HLO categories and its inventory of the UNet's convolutions."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx
import pytest

from benchmarks import profile_step
from conprediff_jax import train
from tests.conftest import tiny_config


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_xla_categories_tell_forward_convolutions_weight_gradients_and_matmuls_apart():
  def loss(w, x, m):
    return jnp.sum(_conv(x, w) ** 2) + jnp.sum((x.reshape(-1, 8) @ m) ** 2)

  args = (jnp.ones((3, 3, 8, 8)), jnp.ones((4, 16, 16, 8)), jnp.ones((8, 8)))
  text = jax.jit(jax.grad(loss, argnums=(0, 2))).lower(*args).compile().as_text()
  names = profile_step.xla_categories(text)
  found = set(names.values())
  assert profile_step.CATEGORIES[0] in found and profile_step.CATEGORIES[1] in found
  assert profile_step.CATEGORIES[2] in found
  # The weight gradient is the convolution whose output holds the kernel's dimensions (in some order).
  lines = [line for line in text.splitlines() if " convolution(" in line]
  assert len(lines) >= 2
  for line in lines:
    name = line.split("=")[0].strip().removeprefix("ROOT ").lstrip("%")
    shape = line.split("=")[1].strip().split("[")[1].split("]")[0]
    kernel_shaped = sorted(map(int, shape.split(","))) == [3, 3, 8, 8]
    assert (names[name] == profile_step.CATEGORIES[1]) == kernel_shaped, line


def test_forward_convolutions_lists_each_of_the_unets_convolutions_once_per_forward():
  config = tiny_config()
  exp = train.make_experiment(config)
  params = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(0))["params"]["model"]
  size = config.data.image_size
  found = profile_step.forward_convolutions(exp.model_def, params, (2, size, size, config.data.channels))
  model = nnx.eval_shape(lambda: nnx.merge(exp.model_def, params))
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
  assert sum(found.values()) == len(convs)
  assert sorted(rhs for (_, rhs, _, _), n in found.items() for _ in range(n)) == sorted(
      c.kernel.shape for c in convs)


def test_machine_line_names_the_cpu_and_its_matmul_speed():
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  assert 0 < harness.matmul_gflops(size=128, repeats=2) < 1e6
  line = harness.machine_line(dict(cpu="Some CPU", cores=2, device="cpu:cpu", matmul_gflops=351.4, load_avg_1min=0.5,
                                   python="3.11.7", jax="0.10.2", date="2026-12-02"))
  assert line.startswith("Some CPU, 2 cores (cpu:cpu), fp32 matmul 351 GFLOP/s, load 0.5 at start;"), line


def test_step_time_variants_parse_into_config_overrides():
  from benchmarks import step_time  # pylint: disable=g-import-not-at-top
  overrides = step_time.parse_variant("model.channels=16,model.channel_mults=(1,2,4),train.lr_schedule=cosine")
  assert overrides == {"model.channels": 16, "model.channel_mults": (1, 2, 4), "train.lr_schedule": "cosine"}
  config = step_time.make_config(overrides)
  assert config.model.channel_mults == (1, 2, 4) and config.model.channels == 16
  with pytest.raises(SystemExit, match="'model.colour' is not a config key"):
    step_time.make_config({"model.colour": 3})


@pytest.mark.parametrize("part", ["resnet", "head"])
def test_block_compile_splits_the_batch_over_the_chips(part):
  """benchmarks/block_compile.py compiles a part for a TPU slice with `per_chip` images on each chip: the per-chip
  program's work per image does not depend on how many chips share the batch."""
  from benchmarks import block_compile  # pylint: disable=g-import-not-at-top
  one = block_compile.compile_part(part, "v5e-1", 2, 16, 32)
  four = block_compile.compile_part(part, "v5e-4", 2, 16, 32)
  assert one.flops > 0 and four.memory["temp"] >= 0
  assert four.flops == pytest.approx(one.flops, rel=0.05)
