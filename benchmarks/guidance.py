"""What classifier-free guidance costs a sampler: one batched forward per step (what the families run) against the
unguided conditional sampler and against two sequential forwards per step.

    python -m benchmarks.guidance

The class-conditional UNet of configs/digits_cond.py, fresh weights (time does not depend on them), DDIM with its
config's steps, config.sample.num_images images per call, fetched to the host. All three run the same sampler loop
(diffusion/samplers.py); they differ only in the denoiser call inside it.
"""

import jax
import numpy as np
from flax import nnx

from benchmarks import harness
from configs import digits_cond
from conprediff_jax import conditioning, families
from conprediff_jax.diffusion import samplers

FIGURE = "guidance"
SCALE = 3.0


def make_samplers(config):
  """name -> jitted `(weights, key, cond) -> images`, for the three ways of calling the denoiser."""
  family = families.get(config)
  model_def = families.abstract_model(family)[0]
  s, d = config.sample, config.data
  shape = (s.num_images, d.image_size, d.image_size, d.channels)

  def with_apply(make_apply):
    def sample(weights, key, cond):
      denoiser = nnx.merge(model_def, weights)
      return samplers.sample(make_apply(denoiser, cond), family.diffusion, key, shape, steps=s.steps)
    return jax.jit(sample)

  def batched(denoiser, cond):
    return conditioning.classifier_free(lambda x, t, c: denoiser(x, t, c)[0], cond, SCALE)

  def sequential(denoiser, cond):
    null = conditioning.null_like(cond)

    def apply(x, t):
      c, u = denoiser(x, t, cond)[0], denoiser(x, t, null)[0]
      return u + SCALE * (c - u)
    return apply

  return {"unguided": with_apply(lambda denoiser, cond: lambda x, t: denoiser(x, t, cond)[0]),
          "guided_batched": with_apply(batched), "guided_sequential": with_apply(sequential)}


def main():
  args = harness.parser(__doc__.splitlines()[0], repeats=7).parse_args()
  harness.start(args, "Classifier-free guidance: cost per sampler call")
  config = digits_cond.get_config()
  family = families.get(config)
  model = family.build(nnx.Rngs(0))
  weights = families.union(nnx.state(model, nnx.Param).to_pure_dict(),
                           nnx.state(model, families.BUFFERS).to_pure_dict())
  cond = family.sample_cond(config.sample.num_images)
  fns = make_samplers(config)
  key, calls = jax.random.key(0), [0]

  def call(fn):
    def run():
      calls[0] += 1
      return np.asarray(fn(weights, jax.random.fold_in(key, calls[0]), cond))
    return run

  compile_s = {name: harness.timed(lambda fn=fn: fn.lower(weights, key, cond).compile())[1]
               for name, fn in fns.items()}
  times = harness.interleave({name: call(fn) for name, fn in fns.items()}, repeats=args.repeats,
                             warmup=args.warmup)
  harness.table(["sampler", "median per call", "images/s", "over unguided"])
  for name in fns:
    median = harness.median(times[name])
    harness.row([name, harness.seconds(median), f"{config.sample.num_images / median:.0f}",
                 f"{median / harness.median(times['unguided']):.2f}"])
  for name in ("guided_batched", "guided_sequential"):
    harness.record(FIGURE, what=name, num_images=config.sample.num_images, steps=config.sample.steps,
                   scale=SCALE, repeats=args.repeats, compile_s=compile_s[name],
                   **harness.compare(times[name], times["unguided"]))


if __name__ == "__main__":
  main()
