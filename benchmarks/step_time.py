"""Train-step time of configs/default.py variants, interleaved in one process (each a set of config overrides).

    python -m benchmarks.step_time "train.batch_size=24" "train.batch_size=32" "model.channels=16,model.channel_mults=(1,2,4)"

Each argument is one variant: comma-separated `key=value` overrides of configs/default.py (values parsed as
Python literals; commas inside parentheses stay with their value). Prints compile time, median step and images/s
per variant. The default config's search in docs/benchmarks.md ("The README's commands") used this.
"""

import ast
import re

from benchmarks import harness
from benchmarks import workloads
from configs import default
from conprediff_jax import cli


def parse_variant(text: str) -> dict:
  overrides = {}
  for item in re.split(r",(?![^()]*\))", text):
    key, _, value = item.partition("=")
    try:
      overrides[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[key.strip()] = value.strip()
  return overrides


def make_config(overrides: dict):
  try:
    return cli.override(default.get_config(), overrides, "step_time")
  except ValueError as e:
    raise SystemExit(str(e)) from None


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=7)
  p.add_argument("variants", nargs="*", default=[""], help="override sets; none: the default config alone")
  args = p.parse_args()
  harness.start(args, "Train-step time of default-config variants")
  steps = {}
  for text in args.variants:
    step = workloads.TrainStep(make_config(parse_variant(text) if text else {}))
    _, compile_s = harness.timed(step.compile)
    steps[text or "default"] = (step, compile_s)
  times = harness.interleave({name: s for name, (s, _) in steps.items()}, repeats=args.repeats, warmup=args.warmup)
  harness.table(["variant", "compile", "median step", "images/s"])
  for name, (step, compile_s) in steps.items():
    median = harness.median(times[name])
    harness.row([name, harness.seconds(compile_s), harness.seconds(median), f"{step.images_per_step / median:.0f}"])
    harness.record("step_time", variant=name, compile_s=compile_s, median_s=median, times_s=times[name])


if __name__ == "__main__":
  main()
