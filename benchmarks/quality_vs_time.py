"""Sample quality against sampling time for every sampler of a trained UNet, and diffusers' DDIM-50 beside it.

    python -m conprediff_jax.main --workdir=workdirs/default                         # a trained default first
    python -m benchmarks.quality_vs_time --workdir=workdirs/default                  # ~15 minutes on 2 cores

For each (sampler, spacing, steps) of --grid: --num-samples samples from the checkpoint's EMA weights (the same
key for all, batches of --batch, jitted as the sampler of --mode=sample; compilation timed apart), FD-digits of
them and seconds per image. The reference is DDIM-250; for each sampler the fewest steps within 5% of its FD-digits
is its "steps at DDIM-250 quality". Then diffusers' DDIMPipeline on the exported weights, 50 steps, --batch images
per call (torch on every core, OMP_WAIT_POLICY=PASSIVE; one warm-up, --repeats timed calls): the headline is our
images/s at DDIM-250 quality (best sampler) over diffusers' DDIM-50 images/s. Writes docs/sampling_quality.png
(FD-digits against seconds per image) unless --no-plot.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/torch_peer_sample.py

import importlib.util  # pylint: disable=g-import-not-at-top,wrong-import-position
import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.torch_peer_sample import DiffusersSampler  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax import evaluation, families, parallel, sampling  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax import images as images_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top,wrong-import-position

FIGURE = "quality_vs_time"
TARGET = 3.0
WITHIN = 1.05  # "at DDIM-250 quality": FD-digits at most 5% above it
REFERENCE = ("ddim", "uniform", 250)
DEFAULT_GRID = ("ddim:uniform:10,20,50,100,250;ddim:trailing:5,10,20;dpm++2m:linspace:5,8,10,15,20;"
                "dpm++2m:karras:5,8,10,15,20;unipc:linspace:5,8,10,15,20;unipc:karras:5,8,10,15,20;euler:karras:10,20,50;"
                "heun:karras:5,8,10")
PLOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "sampling_quality.png")


def parse_grid(grid: str) -> list[tuple[str, str, int]]:
  runs = []
  for part in grid.split(";"):
    sampler, spacing, steps = part.split(":")
    runs += [(sampler, spacing, int(s)) for s in steps.split(",")]
  return runs


def evaluations(sampler: str, steps: int) -> int:
  return 2 * steps - 1 if sampler == "heun" else steps


def main():
  p = harness.parser(__doc__.splitlines()[0], repeats=2)
  p.add_argument("--config", default="configs/default.py", help="the config the workdir was trained with")
  p.add_argument("--workdir", default="workdirs/default")
  p.add_argument("--num-samples", type=int, default=512)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--grid", default=DEFAULT_GRID, help="sampler:spacing:steps,steps;...")
  p.add_argument("--sigma-max", type=float, default=0.0, help="config.sample.sigma_max of the karras rows")
  p.add_argument("--no-plot", action="store_true")
  p.add_argument("--replot", metavar="LOG", nargs="+",
                 help="only redraw the plot from earlier runs' output (a row in several logs: the first one's)")
  args = p.parse_args()
  if args.replot:
    return replot(args.replot, PLOT)
  harness.start(args, "Sample quality against sampling time")
  spec = importlib.util.spec_from_file_location("benchmark_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  families.check_workdir(config, args.workdir, mode="eval")
  trained = sampling.load_latest_ema(config, args.workdir)
  metric = evaluation.DigitsMetric.load_or_train(os.path.join(args.workdir, "eval_cache"), config.data.image_size,
                                                 seed=0)
  key = jax.random.key(config.seed)

  results = []
  runs = parse_grid(args.grid)
  if REFERENCE not in runs:
    runs.insert(0, REFERENCE)
  for sampler, spacing, steps in runs:
    run_config = config.copy_and_resolve_references()
    run_config.sample.update(sampler=sampler, spacing=spacing, steps=steps, sigma_max=args.sigma_max)
    family = families.get(run_config)
    fn = sampling.make_sample_fn(family, trained.model_def, args.batch, mesh=trained.mesh,
                                 weight_shardings=trained.shardings)
    _, compile_s = harness.timed(lambda fn=fn: fn.lower(trained.weights, None, key, None).compile())
    start = time.perf_counter()
    images, _ = sampling.generate(family, fn, trained.weights, None, key, args.num_samples, args.batch)
    seconds = (time.perf_counter() - start) / args.num_samples
    fd = metric.fd(images_lib.to_uint8(images).astype(np.float32) / 127.5 - 1.0)
    if spacing == "karras" and args.sigma_max:
      spacing = f"karras, sigma_max {args.sigma_max:g}"
    result = dict(sampler=sampler, spacing=spacing, steps=steps, evaluations=evaluations(sampler, steps),
                  fd_digits=fd, seconds_per_image=seconds, images_per_s=1 / seconds, compile_s=compile_s)
    results.append(result)
    harness.record(FIGURE, num_samples=args.num_samples, batch=args.batch, **result)

  config.sample.update(num_images=args.batch, steps=50, sampler="ddim", eta=0.0)
  weights = jax.tree.map(parallel.to_host, trained.weights)
  with tempfile.TemporaryDirectory() as folder:
    diffusers_export.export_pipeline(config, weights, folder)
    peer = DiffusersSampler(config, folder, os.cpu_count())
    peer()  # warm-up
    peer_s = min(harness.timed(peer)[1] for _ in range(args.repeats)) / args.batch
  harness.record(FIGURE, workload="diffusers DDIMPipeline, 50 steps", images_per_s=1 / peer_s, batch=args.batch)

  reference = next(r["fd_digits"] for r in results if (r["sampler"], r["spacing"], r["steps"]) == REFERENCE)
  print()
  harness.table(["sampler", "spacing", "steps", "model evaluations", "FD-digits", "images/s",
                 "vs diffusers DDIM-50 (images/s)"])
  for r in results:
    harness.row([r["sampler"], r["spacing"], str(r["steps"]), str(r["evaluations"]), f"{r['fd_digits']:.2f}",
                 f"{r['images_per_s']:.1f}", f"{r['images_per_s'] * peer_s:.2f}"])
  harness.row(["diffusers DDIMPipeline", "uniform", "50", "50", "-", f"{1 / peer_s:.1f}", "1.00"])

  print(f"\nAt DDIM-250 quality (FD-digits <= {WITHIN} x {reference:.2f}): the fewest steps of each sampler")
  harness.table(["sampler", "spacing", "steps", "FD-digits", "images/s", "vs diffusers DDIM-50", "target met?"])
  best = None
  for name in dict.fromkeys((r["sampler"], r["spacing"]) for r in results):
    good = [r for r in results if (r["sampler"], r["spacing"]) == name and r["fd_digits"] <= WITHIN * reference]
    if not good:
      harness.row([*name, "none in the grid", "-", "-", "-", "-"])
      continue
    r = min(good, key=lambda r: r["evaluations"])
    ratio = r["images_per_s"] * peer_s
    best = max(best or r, r, key=lambda r: r["images_per_s"])
    harness.row([*name, str(r["steps"]), f"{r['fd_digits']:.2f}", f"{r['images_per_s']:.1f}", f"{ratio:.2f}",
                 harness.met(ratio, TARGET, at_most=False)])
  if best is not None:
    harness.record(FIGURE, headline="ours at DDIM-250 quality over diffusers DDIM-50", sampler=best["sampler"],
                   spacing=best["spacing"], steps=best["steps"], ratio=best["images_per_s"] * peer_s, target=TARGET)
  if not args.no_plot:
    plot(results, reference, peer_s, PLOT)


COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def plot(results, reference: float, peer_s: float, path: str, size=(760, 460), margin=60) -> None:
  """FD-digits against ms per image, both log-scaled, a line per (sampler, spacing); the DDIM-250 + 5% level
  dashed, diffusers' DDIM-50 time dotted. Drawn with PIL (no plotting library is a dependency)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  ms = np.log10([r["seconds_per_image"] * 1e3 for r in results] + [peer_s * 1e3])
  fd = np.log10([r["fd_digits"] for r in results] + [WITHIN * reference])
  (x0, x1), (y0, y1) = (ms.min() - 0.05, ms.max() + 0.05), (fd.min() - 0.05, fd.max() + 0.05)
  w, h = size
  sx = lambda v: margin + (np.log10(v) - x0) / (x1 - x0) * (w - 2 * margin)
  sy = lambda v: h - margin - (np.log10(v) - y0) / (y1 - y0) * (h - 2 * margin)
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  draw.rectangle([margin, margin, w - margin, h - margin], outline="black")
  level, peer = sy(WITHIN * reference), sx(peer_s * 1e3)
  for x in range(margin, w - margin, 8):
    draw.line([(x, level), (x + 4, level)], fill="gray")
  for y in range(margin, h - margin, 6):
    draw.point((peer, y), fill="black")
  draw.text((margin + 4, level - 12), f"DDIM-250 FD-digits + 5% ({WITHIN * reference:.1f})", fill="gray")
  draw.text((peer + 4, h - margin - 14), "diffusers DDIM-50", fill="black")
  names = list(dict.fromkeys((r["sampler"], r["spacing"]) for r in results))
  for k, name in enumerate(names):
    colour = COLOURS[k % len(COLOURS)]
    rs = sorted((r for r in results if (r["sampler"], r["spacing"]) == name), key=lambda r: r["steps"])
    points = [(sx(r["seconds_per_image"] * 1e3), sy(r["fd_digits"])) for r in rs]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for (x, y), r in zip(points, rs):
      draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
      draw.text((x + 4, y - 12), str(r["steps"]), fill=colour)
    draw.text((w - margin - 150, margin + 6 + 14 * k), " ".join(name), fill=colour)
  for value in (10 ** np.ceil(x0), 10 ** np.floor(x1)):
    draw.text((sx(value) - 10, h - margin + 6), f"{value:g} ms", fill="black")
  for value in (10 ** np.ceil(y0), 10 ** np.floor(y1)):
    draw.text((4, sy(value) - 6), f"FD {value:g}", fill="black")
  draw.text((w // 2 - 120, h - margin + 24), "x: ms per image, y: FD-digits (both log)", fill="black")
  image.save(path)
  print(f"\nwrote {path}")


def replot(logs: list[str], path: str) -> None:
  """The plot again from runs' printed JSON lines (python -m benchmarks.quality_vs_time > log)."""
  records = [json.loads(line[5:]) for log in logs for line in open(log, encoding="utf-8") if line.startswith("JSON {")]
  rows = {}
  for r in records:
    if r.get("figure") == FIGURE and "fd_digits" in r:
      rows.setdefault((r["sampler"], r["spacing"], r["steps"]), r)
  results = list(rows.values())
  reference = next(r["fd_digits"] for r in results if (r["sampler"], r["spacing"], r["steps"]) == REFERENCE)
  peer = next(r for r in records if r.get("workload", "").startswith("diffusers"))
  plot(results, reference, 1 / peer["images_per_s"], path)


if __name__ == "__main__":
  main()
