"""Figure 2's profile: where a train step's time goes, ours (XLA:CPU) and the PyTorch peer, and how fast each runs
the convolutions that dominate both.

    python -m benchmarks.profile_step                      # --steps 3 --torch-threads 2

Three measurements, all in one process on the default config (context off, the like-for-like step):
1. Ours by op category, from a `jax.profiler` trace: XLA:CPU emits one event per executed HLO instruction
   (thunk), which the optimised HLO text maps to a category (convolution forward/input-gradient, convolution
   weight-gradient, matmul, layout copies, reductions, other element-wise fusions). The peer by the same
   categories, from `torch.profiler` self times.
2. The achieved FLOP rate of each step (XLA's cost-analysis FLOPs of our compiled step over each side's median
   step time; the network and its gradient are the same computation on both sides), against the rate of a
   large float32 matmul on the same threads (each library's own): the practical peak of this CPU.
3. Every distinct convolution of the UNet alone, forward (what sampling runs) and forward + both gradients (what
   training runs), XLA vs oneDNN (torch), interleaved; weighted by how often the UNet runs each.
"""

import collections
import glob
import os
import re
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see torch_peer_train.py

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import torch_peer_train  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import workloads  # pylint: disable=g-import-not-at-top,wrong-import-position

FIGURE = "profile_step"
# torch's convolution_backward returns both gradients, so its input gradients count as "weight grads"; our
# optimiser update is fused into element-wise loops.
CATEGORIES = ("conv: forward (ours: + input grads)", "conv: weight grads (torch: + input grads)", "matmul",
              "group norm and reductions", "layout (transpose, copy)", "other element-wise",
              "optimizer (ours: in element-wise)")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = [^=]*?\b([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^%([\w.\-]+) \(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_WINDOW = re.compile(r"window=\{size=([\dx]+)")


def _conv_category(line: str) -> str:
  """A weight gradient is a convolution whose window spans the image: its output is kernel-sized."""
  window = _WINDOW.search(line)
  sizes = [int(s) for s in window.group(1).split("x")] if window else [1]
  return CATEGORIES[1] if max(sizes) > 7 else CATEGORIES[0]


def xla_categories(hlo_text: str) -> dict[str, str]:
  """Instruction name -> category, for every instruction of an optimised HLO module."""
  bodies: dict[str, list[str]] = collections.defaultdict(list)
  current = None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line) or (re.match(r"^ENTRY %([\w.\-]+)", line))
    if head:
      current = head.group(1)
    elif current:
      bodies[current].append(line)

  def of_lines(lines: list[str], seen=()) -> str:
    ops = [(m.group(2), line) for line in lines if (m := _INSTRUCTION.match(line))]
    for op, line in ops:
      if op == "convolution":
        return _conv_category(line)
    if any(op == "dot" for op, _ in ops):
      return CATEGORIES[2]
    if any(op in ("reduce", "reduce-window") for op, _ in ops):
      return CATEGORIES[3]
    for op, line in ops:  # a fusion's category is that of the computation it calls
      called = _CALLS.search(line)
      if op == "fusion" and called and called.group(1) not in seen:
        return of_lines(bodies[called.group(1)], seen + (called.group(1),))
    if ops and all(op in ("transpose", "copy", "parameter", "bitcast", "reshape") for op, _ in ops):
      return CATEGORIES[4]
    return CATEGORIES[5]

  names = {}
  for lines in bodies.values():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m or m.group(2) == "parameter":
        continue
      name, op = m.groups()
      called = _CALLS.search(line)
      if op == "fusion" and called:
        category = of_lines(bodies[called.group(1)], (called.group(1),))
        if category == CATEGORIES[5] and "transpose_copy" in name:
          category = CATEGORIES[4]
      else:
        category = of_lines([line])
      names[name] = category
  return names


def profile_ours(step: workloads.TrainStep, steps: int,
                 names: dict[str, str] | None = None) -> tuple[dict[str, float], float]:
  """(seconds per step in each category, summed over thunks; seconds per step when any thunk ran), from a trace.

  XLA:CPU parallelises inside a thunk (a convolution uses every thread), so the two are close when thunks ran one
  at a time, and the category times are then wall times like torch's self times. `names` maps each instruction to
  its category (default: xla_categories; hlo_profile.sources files them by the line of code instead).
  """
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  names = names or xla_categories(step.compiled.as_text())
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      harness.wait(step())
    jax.profiler.stop_trace()
    trace = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = ProfileData.from_file(trace)
  totals, intervals = collections.Counter(), []
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          totals[names[event.name]] += event.duration_ns * 1e-9 / steps
          intervals.append((event.start_ns, event.end_ns))
  busy, reach = 0, None
  for start, end in sorted(intervals):  # the length of the union of the thunks' intervals
    if reach is None or start > reach:
      busy, reach = busy + end - start, end
    elif end > reach:
      busy, reach = busy + end - reach, end
  return dict(totals), busy * 1e-9 / steps


def _torch_category(op: str) -> str:
  """The category of a torch op by its name (aten::...)."""
  if "convolution" in op:
    return CATEGORIES[1] if "backward" in op else CATEGORIES[0]
  if any(k in op for k in ("addmm", "::mm", "bmm", "matmul", "linear", "dot_product", "baddbmm")):
    return CATEGORIES[2]
  if any(k in op for k in ("group_norm", "sum", "mean", "norm", "max", "min", "var")):
    return CATEGORIES[3]
  if "_foreach" in op or "lerp" in op or "addcdiv" in op or "Optimizer" in op:
    return CATEGORIES[6]
  if any(k in op for k in ("copy_", "contiguous", "clone", "permute", "transpose", "cat", "to_dense")):
    return CATEGORIES[4]
  return CATEGORIES[5]


def profile_torch(step, steps: int) -> dict[str, float]:
  """Seconds per step in each category: torch.profiler self CPU time of the calling thread, i.e. the op's wall time
  (its OpenMP helpers' work inside it is not counted twice)."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  totals = collections.Counter()
  for item in prof.key_averages():
    totals[_torch_category(item.key)] += item.self_cpu_time_total * 1e-6 / steps
  return dict(totals)


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """FLOP/s of an n x n float32 matmul in XLA and in torch (MKL), interleaved."""
  import torch  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x).lower(a).compile()
  t = torch.randn(n, n)
  torch.set_num_threads(threads)
  times = harness.interleave({"xla": lambda: f(a), "torch": lambda: t @ t}, repeats=repeats, warmup=2)
  return {k: 2 * n**3 / harness.median(v) for k, v in times.items()}


def forward_convolutions(graphdef, params, image_shape) -> collections.Counter:
  """(lhs shape, rhs shape, strides, padding) of each convolution in the UNet's forward pass -> how often it runs.

  Traced only (params and the image may be ShapeDtypeStructs): nothing is compiled or run."""
  t = jnp.zeros(image_shape[:1], jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x, t)[0])(
      params, jax.ShapeDtypeStruct(image_shape, jnp.float32))
  found = collections.Counter()

  def visit(eqns):
    for eqn in eqns:
      if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        found[(lhs, rhs, tuple(eqn.params["window_strides"]), tuple(map(tuple, eqn.params["padding"])))] += 1
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", None)
        if inner is not None:
          visit(getattr(inner, "eqns", None) or inner.jaxpr.eqns)

  visit(jaxpr.jaxpr.eqns)
  return found


def conv_workloads(lhs, rhs, strides, padding, threads: int) -> dict:
  """One convolution at these shapes, forward alone (sampling) and forward + both gradients (training), in XLA
  and in torch (oneDNN), on the same values."""
  import torch  # pylint: disable=g-import-not-at-top
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, lhs), jax.random.normal(kw, rhs) * 0.1
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jax.random.normal(kg, jax.eval_shape(conv, x, w).shape)

  def forward_backward(x, w, g):
    out, vjp = jax.vjp(conv, x, w)
    return out, *vjp(g)

  forward = jax.jit(conv).lower(x, w).compile()
  training = jax.jit(forward_backward).lower(x, w, g).compile()
  to_torch = lambda a, axes: torch.from_numpy(np.array(a).transpose(axes).copy())
  tx, tw, tg = to_torch(x, (0, 3, 1, 2)), to_torch(w, (3, 2, 0, 1)), to_torch(g, (0, 3, 1, 2))
  torch_conv = lambda x, w: torch.nn.functional.conv2d(x, w, stride=strides, padding=[p[0] for p in padding])

  def torch_forward():
    torch.set_num_threads(threads)
    with torch.inference_mode():
      return torch_conv(tx, tw)

  def torch_training():
    torch.set_num_threads(threads)
    x, w = tx.detach().requires_grad_(), tw.detach().requires_grad_()
    torch_conv(x, w).backward(tg)

  return {"ours forward": lambda: forward(x, w), "torch forward": torch_forward,
          "ours training": lambda: training(x, w, g), "torch training": torch_training}


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=5)
  p.add_argument("--steps", type=int, default=3, help="profiled steps per side (after the timed repeats)")
  p.add_argument("--torch-threads", type=int, default=os.cpu_count(), help="torch.set_num_threads for the peer")
  workloads.add_config_flags(p, sizes=False)
  args = p.parse_args()
  harness.start(args, "Profile of a train step: ours (XLA:CPU) vs PyTorch")
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)

  config = workloads.make_config("default", weight=0.0, default_batch=args.default_batch)
  ours = workloads.TrainStep(config).compile()
  params = jax.device_get(ours.state["params"]["model"])
  convolutions = forward_convolutions(ours.exp.model_def, params, ours.batches[0]["image"].shape)
  peer = torch_peer_train.TorchTrainStep(config, params, ours.batches, threads=args.torch_threads)
  flops = float(ours.compiled.cost_analysis()["flops"])
  times = harness.interleave({"ours": ours, "torch": peer}, repeats=args.repeats, warmup=args.warmup)
  step_s = {name: harness.median(ts) for name, ts in times.items()}
  ours_categories, ours_busy_s = profile_ours(ours, args.steps)
  by_category = {"ours": ours_categories, "torch": profile_torch(peer, args.steps)}
  peak = matmul_peak(args.torch_threads)

  conv_s = collections.Counter()
  conv_rows = []
  for (lhs, rhs, strides, padding), count in sorted(convolutions.items()):
    t = harness.interleave(conv_workloads(lhs, rhs, strides, padding, args.torch_threads), repeats=args.repeats,
                           warmup=args.warmup)
    medians = {k: harness.median(v) for k, v in t.items()}
    for k, v in medians.items():
      conv_s[k] += count * v
    conv_rows.append((lhs, rhs, strides, count, medians))
    harness.record(FIGURE, part="convolution", lhs=lhs, rhs=rhs, strides=strides, count=count, **medians)

  print(f"\nstep: ours {harness.seconds(step_s['ours'])}, torch {harness.seconds(step_s['torch'])}, "
        f"ours / torch images/s = {step_s['torch'] / step_s['ours']:.2f}\n")
  harness.table(["category", "ours: XLA thunk time, ms/step", "share",
                 "torch: self time, ms/step (wall)", "share"])
  sums = {k: sum(v.values()) for k, v in by_category.items()}
  for category in CATEGORIES:
    cells = []
    for side in ("ours", "torch"):
      v = by_category[side].get(category, 0.0)
      cells += [f"{v * 1e3:.1f}", f"{v / sums[side]:.0%}"]
    harness.row([category] + cells)
  harness.row(["total", f"{sums['ours'] * 1e3:.1f}", "", f"{sums['torch'] * 1e3:.1f}", ""])
  print(f"\nours: some thunk was running for {ours_busy_s * 1e3:.1f} ms of each profiled step (the union of their "
        f"intervals; the sum above counts overlaps twice)")
  harness.record(FIGURE, part="categories", step_s=step_s, categories=by_category, ours_busy_s=ours_busy_s)

  print()
  harness.table(["", "ours (XLA)", "torch"])
  harness.row(["median step", harness.seconds(step_s["ours"]), harness.seconds(step_s["torch"])])
  harness.row(["step GFLOP (XLA cost analysis, one model)", f"{flops / 1e9:.1f}", f"{flops / 1e9:.1f}"])
  harness.row(["achieved GFLOP/s", f"{flops / step_s['ours'] / 1e9:.0f}", f"{flops / step_s['torch'] / 1e9:.0f}"])
  harness.row([f"2048^3 matmul GFLOP/s ({args.torch_threads} threads)", f"{peak['xla'] / 1e9:.0f}",
               f"{peak['torch'] / 1e9:.0f}"])
  harness.row(["step rate / own matmul rate", f"{flops / step_s['ours'] / peak['xla']:.0%}",
               f"{flops / step_s['torch'] / peak['torch']:.0%}"])
  harness.row(["the UNet's convolutions alone, forward + grads, per step", harness.seconds(conv_s["ours training"]),
               harness.seconds(conv_s["torch training"])])
  harness.row(["those convolutions / the whole step", f"{conv_s['ours training'] / step_s['ours']:.0%}",
               f"{conv_s['torch training'] / step_s['torch']:.0%}"])
  harness.row(["the UNet's convolutions alone, forward only (one sampling step)",
               harness.seconds(conv_s["ours forward"]), harness.seconds(conv_s["torch forward"])])
  harness.record(FIGURE, part="summary", step_s=step_s, flops=flops, matmul_flops_per_s=peak,
                 convolutions_s=dict(conv_s))

  print()
  harness.table(["conv input (NHWC)", "kernel (HWIO)", "stride", "per step", "forward: ours", "torch",
                 "ours / torch time", "forward + grads: ours", "torch", "ours / torch time"])
  for lhs, rhs, strides, count, m in conv_rows:
    cells = []
    for mode in ("forward", "training"):
      cells += [harness.seconds(m[f"ours {mode}"]), harness.seconds(m[f"torch {mode}"]),
                f"{m[f'ours {mode}'] / m[f'torch {mode}']:.2f}"]
    harness.row([lhs, rhs, strides[0], count] + cells)


if __name__ == "__main__":
  main()
