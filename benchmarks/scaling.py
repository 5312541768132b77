"""docs/scaling.md: every paper config compiled for the TPU slice its docstring names, and for one larger, by
`--mode=compile` (no TPU needed: libtpu, from requirements-dev.txt, compiles on this CPU).

    python -m benchmarks.scaling                          # every row: hours on 2 CPU cores
    python -m benchmarks.scaling --only=celebahq.py       # the rows whose config matches
    python -m benchmarks.scaling --head                   # also each config without its context head, on its slice
    python -m benchmarks.scaling --meshes                 # coco_t2i.py's memory over the fsdp and model axes
    python -m benchmarks.scaling --gpu=h100-8 --no-larger --only=cifar10   # also on GPUs (requirements-gpu-compile.txt)
    python -m benchmarks.scaling --cached                 # compile nothing: the tables of the reports kept so far

Each compile is `python -m conprediff_jax.main --mode=compile` in a process of its own, whose JSON report is kept
under --out; a row whose report is there already is read back, so a run that was stopped goes on where it was.
Configs that compile to the same program (the same network, batch, mesh and first stage: ffhq.py and
lsun_bedroom.py are celebahq.py on other data) are compiled once and say so. The tables printed are
docs/scaling.md's.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import harness
from conprediff_jax import cli, hardware

# (config, the slice its docstring names, a larger one: twice the chips, of the newest generation).
PAPER = [
    ("configs/cifar10.py", "v4-8", "v5p-16"),
    ("configs/celebahq_inpaint.py", "v4-32", "v5p-64"),
    ("configs/imagenet_inpaint.py", "v4-64", "v5p-128"),
    ("configs/celebahq.py", "v4-32", "v5p-64"),
    ("configs/ffhq.py", "v4-32", "v5p-64"),
    ("configs/lsun_church.py", "v4-32", "v5p-64"),
    ("configs/lsun_bedroom.py", "v4-32", "v5p-64"),
    ("configs/coco_t2i.py", "v4-64", "v5p-128"),
    ("configs/dit_xl2.py", "v4-32", "v5p-64"),
    ("configs/celebahq_dit.py", "v4-32", "v5p-64"),
    ("configs/celebahq_vq.py", "v4-8", "v5p-16"),
    ("configs/celebahq_tokens.py", "v4-8", "v5p-16"),
    *[(f"configs/paper_kl.py:{task}", "v4-8", "v5p-16")
      for task in ("celebahq", "ffhq", "lsun_church", "lsun_bedroom", "coco")],
]
# coco_t2i.py (0.87B parameters) on its slice: how the state's memory per chip moves with the fsdp and model axes.
MESHES = [("(32, 1)", "('data', 'fsdp')"), ("(8, 4)", "('data', 'fsdp')"), ("(1, 32)", "('data', 'fsdp')"),
          ("(8, 2, 2)", "('data', 'fsdp', 'model')")]

# Keys that name where data and weights are, not what is compiled.
_PLACES = {"data": ("tfds_name", "data_dir", "split", "captions", "text_embeddings_file"),
           "first_stage": ("workdir", "config"), "eval": ("split", "inception_weights", "reference_stats"),
           "inpaint": ("split", "images", "masks"), "sample": ("prompts", "prompts_file", "prompt_embeddings_file"),
           "loss": ("lpips_weights",)}


def fingerprint(spec: str) -> str:
  """What the compiled programs of config `spec` depend on: the config, less its data's and weights' places, with
  its first stage's fingerprint in place of that stage's config file."""
  config = cli.load_config_file(spec).to_dict()
  stage = config.get("first_stage", {}).get("config", "")
  for section, keys in _PLACES.items():
    for key in keys:
      config.get(section, {}).pop(key, None)
  config["first_stage_program"] = fingerprint(stage) if stage else ""
  return json.dumps(config, sort_keys=True, default=str)


def compile_row(spec: str, topology: str, out: str, *overrides: str, cached: bool = False) -> dict | None:
  """The report of `spec` (with `overrides`) on `topology`: read back from `out`, or compiled now (with `cached`,
  None where it was not compiled yet)."""
  name = "_".join([spec.replace("configs/", "").replace(".py", "").replace(":", "-"), topology,
                   *[o.split("=")[0].replace("--config.", "") + "-" + o.split("=")[1].strip("()' ").replace(", ", "x")
                     .replace("'", "") for o in overrides]])
  workdir = os.path.join(out, name)
  path = os.path.join(workdir, f"compile_{topology}.json")
  if not os.path.exists(path) and cached:
    return None
  if not os.path.exists(path):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "conprediff_jax.main", f"--config={spec}", "--mode=compile",
                             f"--topology={topology}", f"--workdir={workdir}", *overrides],
                            capture_output=True, text=True, check=False)
    if result.returncode:
      raise SystemExit(f"{spec} on {topology}: --mode=compile failed:\n{result.stderr[-3000:]}")
    print(f"compiled {spec} {' '.join(overrides)} for {topology} in {time.perf_counter() - start:.0f} s", flush=True)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _gib(n) -> str:
  return f"{n / hardware.GIB:.1f}"


def _time(r: dict) -> str:
  if "predicted_step_seconds" not in r:
    return "-"
  source = "" if r["time_source"] == "cost model" else " (roofline)"
  return f"{r['predicted_step_seconds']:.3g}{source}"


def _at_most(r: dict) -> str:
  """'≤ ' where the time is the roofline (a lower bound: the MFU and images/s it gives are upper bounds)."""
  return "" if r.get("time_source") == "cost model" else "≤ "


def _row(spec: str, r: dict, note: str = "") -> list[str]:
  has_time = "predicted_step_seconds" in r
  return [f"`{spec}`{note}", r["topology"], f"{r['params_trainable'] / 1e6:.0f}M",
          f"{r['batch_size']}" + (f" ({r['microbatches']} parts)" if r["microbatches"] > 1 else ""),
          str(r["mesh"]), f"{_gib(r['hbm_peak_bytes'])} / {_gib(r['hbm_capacity_bytes'])}",
          "yes" if r["fits"] else "**no**", _time(r),
          f"{_at_most(r)}{100 * r['predicted_mfu']:.0f}%" if has_time else "-",
          f"{r['arithmetic_intensity']:.0f} / {r['ridge_point']:.0f}" if has_time else "-",
          f"{sum(r['collective_bytes'].values()) / 1e9:.2g}" if "collective_bytes" in r else "-",
          f"{_at_most(r)}{r['images_per_second_per_chip']:.1f}" if has_time else "-",
          f"{'≥ ' if _at_most(r) else ''}{r['hours_to_train_steps'] / 24:.1f} d" if has_time else "-",
          f"{_gib(r['sampler']['hbm_peak_bytes'])} ({'fits' if r['sampler']['fits'] else '**no**'})"]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="/tmp/conprediff_scaling", help="where the compile reports are kept")
  p.add_argument("--only", default="", help="only the configs whose name contains this")
  p.add_argument("--larger", action=argparse.BooleanOptionalAction, default=True, help="also the larger slice")
  p.add_argument("--head", action="store_true", help="also each config without its context head, on its slice")
  p.add_argument("--meshes", action="store_true", help="coco_t2i.py over fsdp and model axes")
  p.add_argument("--gpu", default="", help="also this GPU slice (e.g. h100-8), with XLA's GPU compiler installed")
  p.add_argument("--cached", action="store_true", help="compile nothing: the tables of the reports under --out")
  args = p.parse_args()
  harness.report_machine()

  rows, seen = [], {}
  for spec, named, larger in PAPER:
    if args.only not in spec:
      continue
    key = fingerprint(spec)
    for topology in [*((named, larger) if args.larger else (named,)), *([args.gpu] if args.gpu else [])]:
      if (key, topology) in seen:
        rows.append(_row(spec, seen[key, topology][1], f" (the program of `{seen[key, topology][0]}`)"))
        continue
      report = compile_row(spec, topology, args.out, cached=args.cached)
      if report is None:
        rows.append([f"`{spec}`", topology, "not compiled yet", *["-"] * 11])
        continue
      seen[key, topology] = (spec, report)
      rows.append(_row(spec, report))
      harness.record("scaling", config=spec, **{k: v for k, v in report.items() if k != "config"})
  print()
  harness.table(["config", "slice", "params", "global batch", "mesh", "HBM / chip (GiB)", "fits",
                 "step (s)", "MFU", "FLOP/B / ridge", "collectives (GB)", "img/s/chip", "train.steps",
                 "sampler (GiB)"])
  for row in rows:
    harness.row(row)

  if args.head:
    print()
    harness.table(["config", "slice", "step with head (s)", "without (s)", "with / without",
                   "by the compiler's cycles", "HBM with / without"])
    done = set()
    for spec, named, _ in PAPER:
      key = fingerprint(spec)
      if args.only not in spec or key in done:
        continue
      done.add(key)
      on = compile_row(spec, named, args.out, cached=args.cached)
      off = on and compile_row(spec, named, args.out, "--config.context.weight=0", cached=args.cached)
      if not (on and off and on["params_context_head"]):
        continue
      ratio = (on["predicted_step_seconds"] / off["predicted_step_seconds"]
               if "predicted_step_seconds" in on and "predicted_step_seconds" in off else None)
      # The summed cycle estimates leave out Pallas kernels (the head's solver): a lower bound of the head's cost.
      cycles = [(r.get("where_the_time_goes") or {}).get("total_cycles") for r in (on, off)]
      harness.row([f"`{spec}`", named, _time(on), _time(off), f"{ratio:.3f}" if ratio else "-",
                   f"≥ {cycles[0] / cycles[1]:.3f}" if all(cycles) else "-",
                   f"{_gib(on['hbm_peak_bytes'])} / {_gib(off['hbm_peak_bytes'])}"])

  if args.meshes:
    print()
    harness.table(["mesh (data, fsdp[, model])", "state / chip (GiB)", "HBM / chip (GiB)", "fits", "step (s)",
                   "MFU"])
    for shape, axes in MESHES:
      r = compile_row("configs/coco_t2i.py", "v4-64", args.out, f"--config.mesh.shape={shape}",
                      f"--config.mesh.axes={axes}", cached=args.cached)
      if r is None:
        continue
      harness.row([str(r["mesh"]), _gib(r["state_bytes_per_chip"]), _gib(r["hbm_peak_bytes"]),
                   "yes" if r["fits"] else "**no**", _time(r),
                   f"{_at_most(r)}{100 * r['predicted_mfu']:.0f}%" if "predicted_mfu" in r else "-"])


if __name__ == "__main__":
  main()
