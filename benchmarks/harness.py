"""Timing and reporting shared by the benchmarks.

Every figure is a ratio of two workloads timed side by side in one process: after warm-up, the repeats of A and B
are interleaved (A B B A A B ...) so that the noise of a shared machine falls on both, and each is summarised by
its median. Each script prints a machine line, markdown table rows and one `JSON {...}` line per result.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

CACHE_DIR = os.path.join("/tmp", "conprediff_jax_bench_xla_cache")


# ------------------------------------------------------------------------------------------------------------------
# Command line and set-up.
# ------------------------------------------------------------------------------------------------------------------
def parser(description: str, *, repeats: int = 5, warmup: int = 1) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--repeats", type=int, default=repeats, help="timed repeats per workload (median taken)")
  p.add_argument("--warmup", type=int, default=warmup, help="untimed calls per workload after compilation")
  p.add_argument("--no-compile-cache", action="store_true",
                 help=f"do not use JAX's persistent compilation cache ({CACHE_DIR})")
  return p


def add_torch_threads_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--torch-threads", default=str(os.cpu_count()),
                 help="comma-separated torch.set_num_threads values, each timed as its own peer (the first is "
                      "the figure)")


def torch_threads(args: argparse.Namespace) -> list[int]:
  return [int(t) for t in args.torch_threads.split(",") if t.strip()]


def start(args: argparse.Namespace, title: str) -> dict[str, Any]:
  """Turns on the compilation cache (compiles only; no effect on run times), prints the machine; returns it."""
  import jax  # pylint: disable=g-import-not-at-top
  if not args.no_compile_cache:
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
  print(f"# {title}\n")
  return report_machine()


def report_machine() -> dict[str, Any]:
  """Prints the machine line and its JSON record (what every benchmark starts with); returns the record."""
  m = machine()
  print(f"machine: {machine_line(m)}\n", flush=True)
  print("JSON " + json.dumps({"machine": m}), flush=True)
  return m


# ------------------------------------------------------------------------------------------------------------------
# The machine.
# ------------------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """The machine's speed in one number: a jitted fp32 `size`^3 matmul, GFLOP/s of the fastest of `repeats` calls.

  2-core CPUs of the same name differ by up to 3x here (an AMD EPYC ~350, an Intel Xeon ~95), which is what
  makes figures taken on different machines comparable, or not.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  square = jax.jit(lambda x: x @ x)
  square(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    begin = time.perf_counter()
    square(a).block_until_ready()
    best = min(best, time.perf_counter() - begin)
  return 2 * size**3 / best / 1e9


def machine() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  load = round(os.getloadavg()[0], 2)  # read before the probe, which loads the machine itself
  return {
      "cpu": cpu_model(),
      "cores": os.cpu_count(),
      "load_avg_1min": load,
      "matmul_gflops": round(matmul_gflops(), 1),
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "python": platform.python_version(),
      **{name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "torch", "diffusers")},
      "date": datetime.date.today().isoformat(),
  }


def machine_line(m: Mapping[str, Any]) -> str:
  versions = ", ".join(f"{k} {m[k]}" for k in ("jax", "flax", "torch", "diffusers") if m.get(k))
  return (f"{m['cpu']}, {m['cores']} cores ({m['device']}), fp32 matmul {m['matmul_gflops']:.0f} GFLOP/s, "
          f"load {m['load_avg_1min']} at start; Python {m['python']}, {versions}; {m['date']}")


# ------------------------------------------------------------------------------------------------------------------
# Timing.
# ------------------------------------------------------------------------------------------------------------------
def wait(result: Any) -> None:
  """Blocks until every JAX array in `result` is computed (torch on CPU is synchronous already)."""
  if "jax" in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top
    for leaf in jax.tree.leaves(result):
      if hasattr(leaf, "block_until_ready"):
        leaf.block_until_ready()


def interleave(workloads: Mapping[str, Callable[[], Any]], *, repeats: int = 5,
               warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each workload, `repeats` each, interleaved; the order flips every round.

  Each workload is called `warmup` times first (untimed; compile before, or it lands here).
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  names = list(workloads)
  for _ in range(warmup):
    for name in names:
      wait(workloads[name]())
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      begin = time.perf_counter()
      wait(workloads[name]())
      times[name].append(time.perf_counter() - begin)
  return times


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(result, seconds) of one blocking call: for compile times, reported but never compared."""
  begin = time.perf_counter()
  out = fn()
  wait(out)
  return out, time.perf_counter() - begin


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def compare(times: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
  """Ratio of medians (the figure) and the spread of the per-round ratios (how noisy it was)."""
  paired = [a / b for a, b in zip(times, baseline)]
  return {"median_s": median(times), "baseline_median_s": median(baseline),
          "ratio": median(times) / median(baseline), "paired_min": min(paired), "paired_max": max(paired),
          "times_s": [round(t, 6) for t in times], "baseline_times_s": [round(t, 6) for t in baseline]}


# ------------------------------------------------------------------------------------------------------------------
# Reporting.
# ------------------------------------------------------------------------------------------------------------------
def seconds(s: float) -> str:
  if s >= 1.0:
    return f"{s:.2f} s"
  if s >= 1e-3:
    return f"{s * 1e3:.1f} ms"
  return f"{s * 1e6:.0f} us"


def mib(n: float) -> str:
  return f"{n / 2**20:.1f} MiB"


def met(value: float, target: float, *, at_most: bool) -> str:
  ok = value <= target if at_most else value >= target
  return f"{'yes' if ok else 'no'} ({'<=' if at_most else '>='} {target:g})"


def table(columns: Sequence[str]) -> None:
  print("| " + " | ".join(columns) + " |")
  print("|" + "|".join("---" for _ in columns) + "|", flush=True)


def row(cells: Sequence[Any]) -> None:
  print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def record(figure: str, **fields: Any) -> None:
  """One machine-readable line per result: `JSON {"figure": ..., ...}`."""
  print("JSON " + json.dumps({"figure": figure, **fields}, default=float), flush=True)
