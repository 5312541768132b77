"""Figure 7: does running several train steps per dispatch help? One jitted step per call vs `k` steps inside
one jitted `lax.scan`, per step, at the default config and at the smoke config (where a step is tiny and a fixed
per-call cost would show most).

    python -m benchmarks.dispatch                          # --k 8 --repeats 7

Both run `train.train_step` unchanged on the same batches (the scanned one takes them stacked [k, ...]) and
donate the state. Ratio = time per step with k steps per call / time per step with one (< 1: fewer dispatches
help).
"""

import functools

import jax
import jax.numpy as jnp

from benchmarks import harness
from benchmarks import workloads
from configs import smoke
from conprediff_jax import train

FIGURE = "dispatch"


class ScannedSteps:
  """`k` train steps per call: `lax.scan` over k batches, one dispatch."""

  def __init__(self, config, k: int, *, seed: int = 0):
    self.k = k
    exp = train.make_experiment(config)
    self.state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(seed))
    batches = workloads.digit_batches(config, count=k)
    self.batches = jax.tree.map(lambda *b: jnp.stack(b), *batches)
    self.key = jax.random.key(seed + 1)

    def steps(state, batches, key):
      return jax.lax.scan(lambda s, b: train.train_step(exp, s, b, key), state, batches)

    self.compiled = jax.jit(steps, donate_argnums=0).lower(self.state, self.batches, self.key).compile()

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batches, self.key)
    return metrics


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=7)
  p.add_argument("--k", type=int, default=8, help="steps per dispatch of the scanned variant")
  args = p.parse_args()
  harness.start(args, "Steps per dispatch: one vs k (lax.scan)")
  configs = {"default": workloads.make_config("default"), "smoke": smoke.get_config()}
  rows = []
  for name, config in configs.items():
    single = workloads.TrainStep(config).compile()
    scanned = ScannedSteps(config, args.k)
    # k single steps per timed call, so both sides time the same k steps' work.
    times = harness.interleave({"one per call": lambda s=single: [s() for _ in range(args.k)][-1],
                                f"{args.k} per call": scanned}, repeats=args.repeats, warmup=args.warmup)
    result = harness.compare(times[f"{args.k} per call"], times["one per call"])
    per_step = {k: harness.median(v) / args.k for k, v in times.items()}
    rows.append((name, config.train.batch_size, per_step, result))
    harness.record(FIGURE, config=name, k=args.k, batch=config.train.batch_size, per_step_s=per_step, **result)
  print()
  harness.table(["config", "batch", "per step, one per call", f"per step, {args.k} per call",
                 f"ratio ({args.k} per call / one)", "per-round"])
  for name, batch, per_step, result in rows:
    one, many = per_step.values()
    harness.row([name, batch, harness.seconds(one), harness.seconds(many), f"{result['ratio']:.3f}",
                 f"{result['paired_min']:.2f}-{result['paired_max']:.2f}"])


if __name__ == "__main__":
  main()
