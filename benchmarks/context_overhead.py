"""Figure 1: train-step time with the context loss over without it, per solver and size.

    python -m benchmarks.context_overhead                  # --sizes default,large --solvers sorted,sinkhorn

Both steps are built by `train.make_experiment` from configs/default.py (config.context.weight 0 vs 0.1, every
other context setting as the default config has it) and compiled as the trainer compiles them (donating the
state), on real digits batches; "large" is 32x32, batch 64, attention at 8x8.
Targets: <= 1.10 (sorted), <= 1.20 (sinkhorn).
"""

import gc

from benchmarks import harness
from benchmarks import workloads

TARGETS = {"sorted": 1.10, "sinkhorn": 1.20}
FIGURE = "context_overhead"


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=9)  # the sorted ratio sits near its target: tighter medians
  workloads.add_config_flags(p)
  p.add_argument("--solvers", default="sorted,sinkhorn", help="comma-separated: sorted,sinkhorn")
  args = p.parse_args()
  sizes = workloads.parse_sizes(args.sizes)
  solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
  if not solvers or set(solvers) - set(TARGETS):
    raise SystemExit(f"--solvers takes a comma-separated subset of sorted,sinkhorn, got {args.solvers!r}")
  harness.start(args, "Context-loss overhead of a train step")

  results = []
  for size in sizes:
    steps = {"off": workloads.TrainStep(workloads.make_config(size, weight=0.0, default_batch=args.default_batch))}
    for solver in solvers:
      steps[solver] = workloads.TrainStep(workloads.make_config(size, weight=0.1, solver=solver,
                                                                default_batch=args.default_batch))
    compile_s = {name: harness.timed(step.compile)[1] for name, step in steps.items()}
    times = harness.interleave(steps, repeats=args.repeats, warmup=args.warmup)
    config = steps["off"].config
    for solver in solvers:
      c = harness.compare(times[solver], times["off"])
      results.append((size, config, solver, c))
      harness.record(FIGURE, size=size, image_size=config.data.image_size, batch=config.train.batch_size,
                     solver=solver, repeats=args.repeats, target=TARGETS[solver],
                     position_fraction=steps[solver].config.context.get("position_fraction"),
                     compile_s={k: compile_s[k] for k in ("off", solver)}, **c)
    del steps
    gc.collect()

  print()
  harness.table(["size", "solver", "median step, off", "median step, on", "ratio on/off", "per-round ratios",
                 "target met?"])
  for size, config, solver, c in results:
    harness.row([f"{size} ({config.data.image_size}x{config.data.image_size}, batch {config.train.batch_size})",
                 solver, harness.seconds(c["baseline_median_s"]), harness.seconds(c["median_s"]),
                 f"{c['ratio']:.2f}", f"{c['paired_min']:.2f}-{c['paired_max']:.2f}",
                 harness.met(c["ratio"], TARGETS[solver], at_most=True)])


if __name__ == "__main__":
  main()
