"""One part of a train step compiled alone for a TPU chip at several batches per chip, to see what the TPU compiler
makes of it: a UNet resnet block (bf16, forward and backward: docs/scaling.md, "The batch per chip") or the context
term (the head and its loss, value and gradients: "The context head's cost on the slice").

    python -m benchmarks.block_compile                               # 256x256, 128 channels, v4: 2 to 16 per chip
    python -m benchmarks.block_compile --size=64 --channels=256 --topology=v5p-8
    python -m benchmarks.block_compile --part=head --per_chip=16    # celebahq_inpaint.py's head on a v4 chip
    python -m benchmarks.block_compile --part=head --size=32 --per_chip=32    # cifar10.py's

No TPU needed (libtpu compiles on this CPU); each compile takes seconds to a minute. Per chip and per image: FLOPs,
HBM bytes, their ratio, the compiler's own cycle estimate summed over the scheduled instructions, and the
temporaries. The head's sizes are the paper configs' (configs/default.py's context section, 3 target channels,
position_fraction 0.25 of configs/paper.py).
"""

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: the TPU is compiled for, not used

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax import compile_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.context import decoder as decoder_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.context import loss as loss_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.models import unet  # pylint: disable=g-import-not-at-top,wrong-import-position


def compile_part(part: str, topology: str, per_chip: int, size: int, channels: int, targets: int = 3,
                 fraction: float = 0.25) -> compile_report.Program:
  """`part`'s loss and gradients (parameters and input) on `per_chip` images per chip of `topology`: a
  ResnetBlock2D of `channels`, or the context term on `channels` features (`targets` channels, a `fraction` of the
  positions scored)."""
  _, devices = compile_report.target_devices(topology)
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  spec = lambda shape, dtype, axes: jax.ShapeDtypeStruct(
      shape, dtype, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes)))
  batch = per_chip * len(devices)
  if part == "resnet":
    module = unet.ResnetBlock2D(channels, channels, 4 * channels, groups=32, dropout=0.0, rngs=nnx.Rngs(0),
                                dtype=jnp.bfloat16)
    apply = lambda m, x, extra: jnp.mean(jnp.square(m(x, extra).astype(jnp.float32)))
    inputs = (spec((batch, size, size, channels), jnp.bfloat16, ("data",)),
              spec((batch, 4 * channels), jnp.float32, ("data",)))
  else:
    module = decoder_lib.ContextDecoder(channels, targets, num_strides=3, num_samples=8, latent_dim=16, hidden_dim=32,
                                        rngs=nnx.Rngs(0))
    apply = lambda m, x, y: loss_lib.context_loss(m, x, y, jax.random.key(0), strides=(1, 2, 3),
                                                  position_fraction=fraction)
    inputs = (spec((batch, size, size, channels), jnp.bfloat16, ("data",)),
              spec((batch, size, size, targets), jnp.float32, ("data",)))
  graph, params = nnx.split(module)

  def step(params, x, extra):
    return jax.value_and_grad(lambda p, x: apply(nnx.merge(graph, p), x, extra), argnums=(0, 1))(params, x)

  args = (jax.tree.map(lambda p: spec(p.shape, p.dtype, ()), params), *inputs)
  with jax.set_mesh(mesh):  # as the trainer does: the head's TPU kernel runs on each chip's own sets
    return compile_report.compile_program(jax.jit(step).lower(*args))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--part", choices=("resnet", "head"), default="resnet", help="what to compile")
  p.add_argument("--topology", default="v4-8", help="the slice (its chips split the batch)")
  p.add_argument("--size", type=int, default=256, help="the image's height and width")
  p.add_argument("--channels", type=int, default=128, help="the block's width, or the features the head reads")
  p.add_argument("--per_chip", default="2,4,8,16", help="batches per chip, comma-separated")
  p.add_argument("--targets", type=int, default=3, help="the head's target channels")
  p.add_argument("--fraction", type=float, default=0.25, help="the head's position_fraction")
  args = p.parse_args()
  harness.report_machine()
  what = (f"ResnetBlock2D {args.channels}->{args.channels}, bf16" if args.part == "resnet"
          else f"the context term on {args.channels} bf16 features, {args.targets} targets, {args.fraction} scored")
  print(f"{what}, at {args.size}x{args.size}, on {args.topology}")
  harness.table(["images / chip", "GFLOP / image", "HBM GB / image", "FLOP/B", "cycles / image (compiler)",
                 "temporaries (MiB)", "largest share of cycles"])
  for n in (int(s) for s in args.per_chip.split(",")):
    prog = compile_part(args.part, args.topology, n, args.size, args.channels, args.targets, args.fraction)
    cycles = prog.profile["total_cycles"]
    op, share = prog.profile["by_op"][0]
    harness.row([n, f"{prog.flops / n / 1e9:.3g}", f"{prog.bytes_accessed / n / 1e9:.3g}",
                 f"{prog.flops / prog.bytes_accessed:.0f}", f"{cycles / n / 1e6:.3g}M",
                 f"{prog.memory['temp'] / 2**20:.0f}", f"{op} ({share:.0%})"])
    harness.record("block_compile", part=args.part, topology=args.topology, size=args.size, channels=args.channels,
                   per_chip=n, flops=prog.flops, bytes_accessed=prog.bytes_accessed, cycles=cycles,
                   temp=prog.memory["temp"])


if __name__ == "__main__":
  main()
