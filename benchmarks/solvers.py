"""Figure 4: the context-loss Wasserstein solvers alone, at a training-sized batch: time and accuracy.

    python -m benchmarks.solvers                           # --channels 1,3,4 --images 8 --size 32 --subsample 256

Sets as the context loss builds them: the multi-stride (1, 2, 3) neighbourhoods of a random [8, 32, 32, C] image in
[-1, 1] (8,192 positions x 3 strides = 24,576 target sets of 8 points, border neighbours masked out) against as
many predicted sets of Q = 8 points, uniform in [-1, 1]. Each solver is timed on the mean W2^2 (forward) and on
its value and gradient with respect to the predictions, all variants interleaved; the ratio is over the sorted
per-coordinate solver. Accuracy: mean relative error against the `exact` solver on a random subsample of sets.
With C > 1 the per-coordinate sorted form is the sum of the 1-D marginal distances, a lower bound of the joint
W2^2 and a different quantity from what `exact` computes; its "error" there measures that gap.
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from conprediff_jax.context import neighbourhoods
from conprediff_jax.context import wasserstein2

FIGURE = "solvers"
STRIDES = (1, 2, 3)
NUM_SAMPLES = 8  # Q
VARIANTS = {
    "sorted per-coordinate": dict(solver="sorted"),
    "sorted sliced K=8": dict(solver="sorted", num_projections=8),
    "sorted sliced K=16": dict(solver="sorted", num_projections=16),
    # 19 over-relaxed iterations + 1 plain (the default), and the former default of 50 plain ones.
    "sinkhorn eps=0.05, 20 it.": dict(solver="sinkhorn", epsilon=0.05, iterations=20),
    "sinkhorn eps=0.05, 50 plain": dict(solver="sinkhorn", epsilon=0.05, iterations=50, momentum=1.0),
    "sinkhorn eps=0.01, 20 it.": dict(solver="sinkhorn", epsilon=0.01, iterations=20),
}
BASELINE = "sorted per-coordinate"


def point_sets(images: int, size: int, channels: int, seed: int = 0):
  """(x [M, Q, C] predictions, y [M, 8, C] neighbours, mask [M, 8]) with M = images * size^2 * len(STRIDES)."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1.0, 1.0, (images, size, size, channels)).astype(np.float32)
  values, mask = neighbourhoods(jnp.asarray(image), STRIDES)
  y, mask = values.reshape(-1, values.shape[-2], channels), mask.reshape(-1, mask.shape[-1])
  x = rng.uniform(-1.0, 1.0, (y.shape[0], NUM_SAMPLES, channels)).astype(np.float32)
  return jnp.asarray(x), y, mask


def distances_fn(options):
  """jitted (x, y, mask, key) -> W2^2 per set; the key feeds the sliced solver's projections."""
  def distances(x, y, mask, key):
    extra = {"key": key} if options.get("num_projections") else {}
    return wasserstein2(x, y, y_weights=mask, **options, **extra)
  return distances


def main():
  p = harness.parser(__doc__.splitlines()[0])
  p.add_argument("--channels", default="1,3,4", help="comma-separated point dimensions C")
  p.add_argument("--images", type=int, default=8, help="images in the batch")
  p.add_argument("--size", type=int, default=32, help="image height and width")
  p.add_argument("--subsample", type=int, default=256, help="sets compared with the exact solver")
  args = p.parse_args()
  harness.start(args, "Wasserstein solvers: time and accuracy")
  key = jax.random.key(0)

  rows = []
  for channels in [int(c) for c in args.channels.split(",") if c.strip()]:
    x, y, mask = point_sets(args.images, args.size, channels)
    print(f"C={channels}: {x.shape[0]} sets; {int(jnp.sum(~jnp.all(mask, -1)))} with masked (border) neighbours",
          flush=True)
    # Accuracy on a subsample.
    pick = np.sort(np.random.default_rng(1).choice(x.shape[0], min(args.subsample, x.shape[0]), replace=False))
    sub = (x[pick], y[pick], mask[pick])
    exact = np.asarray(wasserstein2(sub[0], sub[1], y_weights=sub[2], solver="exact"))
    errors = {}
    for name, options in VARIANTS.items():
      approx = np.asarray(jax.jit(distances_fn(options))(*sub, key))
      relative = (approx - exact) / np.maximum(exact, 1e-12)
      errors[name] = (float(np.mean(np.abs(relative))), float(np.mean(relative)))
    # Timing, forward and forward + gradient, every variant interleaved.
    workloads, compile_s = {}, {}
    for name, options in VARIANTS.items():
      loss = lambda *a, _f=distances_fn(options): jnp.mean(_f(*a))
      for mode, fn in (("forward", loss), ("forward+grad", jax.value_and_grad(loss))):
        compiled, compile_s[(name, mode)] = harness.timed(
            lambda fn=fn: jax.jit(fn).lower(x, y, mask, key).compile())
        workloads[(name, mode)] = lambda c=compiled: c(x, y, mask, key)
    times = harness.interleave({f"{n}|{m}": f for (n, m), f in workloads.items()}, repeats=args.repeats,
                               warmup=args.warmup)
    for name in VARIANTS:
      result = {"channels": channels, "solver": name, "sets": int(x.shape[0]), "subsample": len(pick),
                "mean_abs_rel_error": errors[name][0], "mean_rel_error": errors[name][1]}
      for mode in ("forward", "forward+grad"):
        c = harness.compare(times[f"{name}|{mode}"], times[f"{BASELINE}|{mode}"])
        result[mode] = {"median_s": c["median_s"], "ratio_vs_sorted": c["ratio"],
                        "compile_s": compile_s[(name, mode)]}
      rows.append(result)
      harness.record(FIGURE, repeats=args.repeats, **result)

  print()
  harness.table(["C", "solver", "forward", "vs sorted", "forward+grad", "vs sorted",
                 "mean abs. rel. error vs exact", "mean signed rel. error"])
  for r in rows:
    f, g = r["forward"], r["forward+grad"]
    harness.row([r["channels"], r["solver"], harness.seconds(f["median_s"]), f"{f['ratio_vs_sorted']:.2f}",
                 harness.seconds(g["median_s"]), f"{g['ratio_vs_sorted']:.2f}",
                 f"{r['mean_abs_rel_error']:.3f}", f"{r['mean_rel_error']:+.3f}"])


if __name__ == "__main__":
  main()
