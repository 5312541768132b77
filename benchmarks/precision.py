"""Figure 8: train-step time with bfloat16 compute (float32 parameters, Adam moments and EMA) over float32 compute.

    python -m benchmarks.precision                         # --sizes default,large --repeats 7

The switch is `config.model.dtype = "bfloat16"`: the UNet computes in bf16 while its parameters, the optimiser
and the EMA stay float32 (the loss and the context loss are computed in float32). Both steps are built and
compiled as the trainer builds them, context loss off, on real digits batches. Ratio < 1: bf16 is faster.
On a GPU or TPU this is the setting for speed; the CPU figure says what it costs or saves where XLA:CPU has
no fast bf16 convolution.
"""

from benchmarks import harness
from benchmarks import workloads

FIGURE = "precision"


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=7)
  workloads.add_config_flags(p)
  args = p.parse_args()
  harness.start(args, "bf16 compute vs float32")
  rows = []
  for size in workloads.parse_sizes(args.sizes):
    steps = {}
    for dtype in ("float32", "bfloat16"):
      config = workloads.make_config(size, weight=0.0, default_batch=args.default_batch)
      config.model.dtype = dtype
      steps[dtype] = workloads.TrainStep(config).compile()
    times = harness.interleave(steps, repeats=args.repeats, warmup=args.warmup)
    result = harness.compare(times["bfloat16"], times["float32"])
    rows.append((size, steps["float32"].config.train.batch_size, result))
    harness.record(FIGURE, size=size, **result)
  print()
  harness.table(["size", "batch", "median step, float32", "median step, bf16", "ratio bf16 / float32",
                 "per-round"])
  for size, batch, r in rows:
    harness.row([size, batch, harness.seconds(r["baseline_median_s"]), harness.seconds(r["median_s"]),
                 f"{r['ratio']:.2f}", f"{r['paired_min']:.2f}-{r['paired_max']:.2f}"])


if __name__ == "__main__":
  main()
