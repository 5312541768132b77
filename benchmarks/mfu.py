"""Figure 6 (GPU only): train images/s and model FLOPs utilisation of a latent-diffusion-sized UNet in bf16.

    python -m benchmarks.mfu                               # --peak 989e12 (H100 SXM dense bf16) --batch 128

A 256x256-image latent config: 32x32x4 latents, widths 128-256-256, 2 res blocks, attention at 16 and 8,
bf16 compute (config.model.dtype), the full train step (AdamW, EMA; context head per --context). MFU = (XLA's
cost-analysis FLOPs of the compiled step / median step time) / --peak. On a machine without a GPU it says so and
exits 0 (--allow-cpu runs it anyway, to check the code path; the MFU is then meaningless).
"""

import sys

import jax

from benchmarks import harness
from benchmarks import workloads

FIGURE = "mfu"
H100_SXM_BF16_DENSE = 989e12


def latent_config(args):
  config = workloads.make_config("default", weight=0.0 if args.context == "off" else 0.1,
                                 solver=None if args.context == "off" else args.context)
  config.data.image_size, config.data.channels = args.image_size, args.latent_channels
  m = config.model
  m.channels, m.channel_mults, m.num_res_blocks = args.channels, (1, 2, 2), 2
  m.attention_resolutions = tuple(args.image_size // k for k in (2, 4))  # 16 and 8 for 32x32 latents
  m.num_heads, m.num_groups, m.dtype = 8, 32, args.dtype
  config.train.batch_size = args.batch
  return config


def step_flops(stage) -> float | None:
  """FLOPs of one call from XLA's cost analysis of a Lowered or Compiled step (a dict, or a list of one)."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=10, warmup=2)
  p.add_argument("--peak", type=float, default=H100_SXM_BF16_DENSE, help="peak bf16 FLOP/s of the device")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--channels", type=int, default=128, help="width of the first level (then x2, x2)")
  p.add_argument("--image-size", type=int, default=32, help="latent height and width")
  p.add_argument("--latent-channels", type=int, default=4)
  p.add_argument("--dtype", default="bfloat16", help="config.model.dtype (compute); parameters stay float32")
  p.add_argument("--context", default="off", choices=("off", "sorted", "sinkhorn"))
  p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (code-path check only)")
  args = p.parse_args()
  platform = jax.devices()[0].platform
  if platform != "gpu" and not args.allow_cpu:
    print(f"mfu: no GPU present (JAX platform {platform!r}); nothing to measure.")
    sys.exit(0)
  harness.start(args, "Train throughput and MFU on a GPU")

  config = latent_config(args)
  shape = (args.batch, args.image_size, args.image_size, args.latent_channels)
  batches = [{"image": jax.random.normal(jax.random.key(i), shape)} for i in range(2)]  # latents ~ N(0, 1)
  step = workloads.TrainStep(config, batches=batches)
  _, compile_s = harness.timed(step.compile)
  flops = step_flops(step.compiled)
  # Cross-check on the HLO before optimisation: a custom call (e.g. cuDNN attention) may count 0 in either.
  lowered_flops = step_flops(step.lowered)
  if not flops:
    raise SystemExit("mfu: XLA's cost analysis of the compiled step reported no FLOPs")
  times = harness.interleave({"step": step}, repeats=args.repeats, warmup=args.warmup)["step"]
  seconds = harness.median(times)
  achieved = flops / seconds
  mfu = achieved / args.peak

  harness.table(["config", "median step", "images/s", "step TFLOPs (XLA)", "achieved TFLOP/s", "peak TFLOP/s",
                 "MFU"])
  harness.row([f"{args.image_size}x{args.image_size}x{args.latent_channels} latents, widths "
               f"{args.channels}-{2 * args.channels}-{2 * args.channels}, batch {args.batch}, {args.dtype}, "
               f"context {args.context}", harness.seconds(seconds), f"{args.batch / seconds:.0f}",
               f"{flops / 1e12:.3f}", f"{achieved / 1e12:.1f}", f"{args.peak / 1e12:.0f}", f"{100 * mfu:.1f}%"])
  harness.record(FIGURE, platform=platform, batch=args.batch, channels=args.channels, image_size=args.image_size,
                 latent_channels=args.latent_channels, dtype=args.dtype, context=args.context,
                 repeats=args.repeats, median_s=seconds, images_per_s=args.batch / seconds, step_flops=flops,
                 lowered_step_flops=lowered_flops,
                 achieved_flops_per_s=achieved, peak_flops_per_s=args.peak, mfu=mfu, compile_s=compile_s,
                 min_s=min(times), max_s=max(times))


if __name__ == "__main__":
  main()
