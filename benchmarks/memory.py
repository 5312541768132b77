"""Figure 5: memory of a compiled train step with the context head (sorted, sinkhorn) over without it.

    python -m benchmarks.memory                            # --sizes default,large

From XLA's compiled memory analysis of the step as the trainer compiles it (state donated), lowered on abstract
inputs: nothing runs, and the numbers are deterministic, so there are no repeats. `total` = temp + argument +
output bytes; with donation most of the output aliases the arguments (`alias`), so the live peak is nearer
temp + argument + output - alias, also reported.
"""

import gc

from benchmarks import harness
from benchmarks import workloads
from conprediff_jax import train

FIGURE = "memory"
VARIANTS = {"off": dict(weight=0.0), "sorted": dict(weight=0.1, solver="sorted"),
            "sinkhorn": dict(weight=0.1, solver="sinkhorn")}


def analyse(config) -> dict[str, int]:
  exp = train.make_experiment(config)
  compiled = workloads.jitted_train_step(exp).lower(*workloads.abstract_inputs(config, exp)).compile()
  stats = compiled.memory_analysis()
  out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output", "alias")}
  out["total"] = out["temp"] + out["argument"] + out["output"]
  out["peak_estimate"] = out["total"] - out["alias"]
  return out


def main():
  p = harness.parser(__doc__.splitlines()[0])
  workloads.add_config_flags(p)
  args = p.parse_args()
  harness.start(args, "Train-step memory from XLA's compiled memory analysis")

  rows = []
  for size in workloads.parse_sizes(args.sizes):
    stats = {}
    for name, overrides in VARIANTS.items():
      config = workloads.make_config(size, default_batch=args.default_batch, **overrides)
      stats[name], compile_s = harness.timed(lambda config=config: analyse(config))
      gc.collect()
      ratio = stats[name]["total"] / stats["off"]["total"]
      rows.append((size, config, name, stats[name], ratio, stats[name]["temp"] / stats["off"]["temp"]))
      harness.record(FIGURE, size=size, image_size=config.data.image_size, batch=config.train.batch_size,
                     variant=name, ratio_total=ratio, ratio_temp=rows[-1][-1], compile_s=compile_s,
                     **{f"{k}_bytes": v for k, v in stats[name].items()})

  print()
  harness.table(["size", "context", "temp", "argument", "output", "alias", "total (temp+arg+out)",
                 "total / off", "temp / off", "peak estimate (total - alias)"])
  for size, config, name, s, ratio, temp_ratio in rows:
    harness.row([f"{size} ({config.data.image_size}x{config.data.image_size}, batch {config.train.batch_size})",
                 name, harness.mib(s["temp"]), harness.mib(s["argument"]), harness.mib(s["output"]),
                 harness.mib(s["alias"]), harness.mib(s["total"]), f"{ratio:.2f}", f"{temp_ratio:.2f}",
                 harness.mib(s["peak_estimate"])])


if __name__ == "__main__":
  main()
