"""The token model (configs/digits_tokens.py): its train step with the context loss over without it, and MaskGIT
decoding throughput.

    python -m conprediff_jax.main --config=configs/digits_vq.py --workdir=workdirs/digits_vq   # the tokenizer, once
    python -m benchmarks.token_model                      # --tokenizer=workdirs/digits_vq
    python -m benchmarks.token_model --profile            # also: each step's thread time by line of code

Both train steps are built by `train.make_experiment` from configs/digits_tokens.py (config.context.weight 0 vs
its 0.1) and compiled as the trainer compiles them, the frozen tokenizer passed as its own argument, on real
digits batches. Decoding: the jitted sampler (MaskGIT steps, then the tokenizer's decoder) for
config.sample.num_images images, fetched to the host. Target: context on / off <= 1.10. --profile traces 20 of each
step with jax.profiler and sums the time of the executed instructions (thunks, on every thread) by the line of code
that made them (hlo_profile.sources): where the context step's extra time goes.
"""

import os

import jax
import numpy as np

from benchmarks import harness
from benchmarks import workloads
from configs import digits_tokens
from conprediff_jax import hlo_profile
from conprediff_jax import sampling

TARGET = 1.10
FIGURE = "token_model"


def token_config(tokenizer: str, weight: float | None = None, position_fraction: float | None = None):
  config = digits_tokens.get_config()
  config.first_stage.workdir = tokenizer
  if weight is not None:
    config.context.weight = weight
  if position_fraction is not None:
    config.context.position_fraction = position_fraction
  return config


class Decoder:
  """Each call decodes `num_images` samples with a fresh key and returns them on the host."""

  def __init__(self, step: workloads.TrainStep):
    exp, config = step.exp, step.config
    self.num_images = config.sample.num_images
    fn = sampling.make_sample_fn(exp.family, exp.model_def, self.num_images, first_stage_def=exp.first_stage_def)
    self.weights, self.first_stage = step.state["ema"], step.first_stage
    self.key, self.calls = jax.random.key(0), 0
    self.compiled = fn.lower(self.weights, self.first_stage, self.key, None).compile()

  def __call__(self):
    self.calls += 1
    return np.asarray(self.compiled(self.weights, self.first_stage, jax.random.fold_in(self.key, self.calls), None))


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=9)
  p.add_argument("--tokenizer", default="workdirs/digits_vq", help="a trained tokenizer's workdir")
  p.add_argument("--position-fraction", type=float, default=None,
                 help="context.position_fraction of the 'on' step (unset: the config's)")
  p.add_argument("--profile", action="store_true", help="also each step's thread time by line of code")
  args = p.parse_args()
  if not os.path.isdir(os.path.join(args.tokenizer, "checkpoints")):
    raise SystemExit(f"no tokenizer in {args.tokenizer}: train it first with "
                     f"python -m conprediff_jax.main --config=configs/digits_vq.py --workdir={args.tokenizer}")
  harness.start(args, "The token model: context-loss overhead and decoding throughput")

  steps = {"off": workloads.TrainStep(token_config(args.tokenizer, weight=0.0)),
           "on": workloads.TrainStep(token_config(args.tokenizer, position_fraction=args.position_fraction))}
  compile_s = {name: harness.timed(step.compile)[1] for name, step in steps.items()}
  times = harness.interleave(steps, repeats=args.repeats, warmup=args.warmup)
  c = harness.compare(times["on"], times["off"])
  config = steps["on"].config
  harness.record(FIGURE, what="train_step", batch=config.train.batch_size, weight=config.context.weight,
                 position_fraction=config.context.position_fraction, repeats=args.repeats, target=TARGET,
                 compile_s=compile_s, **c)

  decoder, decode_compile_s = harness.timed(lambda: Decoder(steps["off"]))
  decode_times = harness.interleave({"decode": decoder}, repeats=args.repeats, warmup=args.warmup)["decode"]
  images_per_s = decoder.num_images / harness.median(decode_times)
  harness.record(FIGURE, what="decode", num_images=decoder.num_images, steps=config.sample.steps,
                 median_s=harness.median(decode_times), images_per_s=images_per_s, compile_s=decode_compile_s)

  print()
  harness.table(["workload", "median, context off", "median, context on", "ratio on/off", "per-round ratios",
                 "target met?"])
  grid = steps["on"].exp.family.grid
  harness.row([f"train step (batch {config.train.batch_size}, {grid}x{grid} tokens)", harness.seconds(c["baseline_median_s"]),
               harness.seconds(c["median_s"]), f"{c['ratio']:.2f}", f"{c['paired_min']:.2f}-{c['paired_max']:.2f}",
               harness.met(c["ratio"], TARGET, at_most=True)])
  print(f"\nMaskGIT decoding, {decoder.num_images} images x {config.sample.steps} steps + tokenizer decoder: "
        f"{harness.seconds(harness.median(decode_times))} per batch, {images_per_s:.0f} images/s "
        f"(compile {decode_compile_s:.1f} s)")
  if args.profile:
    print_profile(steps)


def print_profile(steps: dict[str, workloads.TrainStep], count: int = 20, top: int = 15):
  """The lines of code whose thunks took the most extra thread time per step with the context loss on."""
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top  # it imports torch, for its peer
  ms = {name: {line: 1e3 * t for line, t in profile_step.profile_ours(
      step, count, hlo_profile.sources(step.compiled.as_text()))[0].items()} for name, step in steps.items()}
  extra = lambda line: ms["on"].get(line, 0.0) - ms["off"].get(line, 0.0)
  print()
  harness.table(["line of code", "context off (ms)", "context on (ms)", "on - off (ms)"])
  for line in sorted(set(ms["on"]) | set(ms["off"]), key=extra, reverse=True)[:top]:
    harness.row([line, f"{ms['off'].get(line, 0.0):.2f}", f"{ms['on'].get(line, 0.0):.2f}", f"{extra(line):+.2f}"])
  harness.row(["every line (thread time per step)", f"{sum(ms['off'].values()):.2f}", f"{sum(ms['on'].values()):.2f}",
               f"{sum(ms['on'].values()) - sum(ms['off'].values()):+.2f}"])


if __name__ == "__main__":
  main()
