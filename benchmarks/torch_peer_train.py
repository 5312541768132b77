"""Figure 2: training images/s of our UNet step over the same network in PyTorch (diffusers UNet2DModel).

    python -m benchmarks.torch_peer_train                  # --no-torch-compile to skip the compiled peer

Ours: the default config's full train step (eps MSE, clip, AdamW, EMA), context off (the like-for-like figure)
and on (sorted, lambda 0.1). Peer: `UNet2DModel(**unet2d_config(config))` holding the same initial weights, the
same batch, eps-prediction MSE at uniform t, global-norm clipping, torch.optim.AdamW and an EMA update, fp32 on
CPU with torch.set_num_threads(os.cpu_count()) and OMP_WAIT_POLICY=PASSIVE (see below); eager, and under
torch.compile when that works offline (--torch-threads 2,1 adds peers at other thread counts).
Target: ours/theirs >= 1.5.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: nothing is downloaded
# Read when torch loads its OpenMP runtime. Spinning at barriers (the default) makes a multi-threaded torch step
# 10-30x slower whenever another process holds a core of a shared machine; passive waiting costs it nothing here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import workloads  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.diffusion import gaussian  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top,wrong-import-position

TARGET = 1.5
FIGURE = "torch_peer_train"


def torch_unet(config, params):
  """diffusers UNet2DModel with our parameters (float32), in train mode."""
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top
  unet_config = diffusers_export.unet2d_config(config)
  model = UNet2DModel(**unet_config)
  state = diffusers_export.to_diffusers_state_dict(params, unet_config)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return model.train()


class TorchTrainStep:
  """One PyTorch train step per call, the peer of `train.train_step` (minus its non-finite guard)."""

  def __init__(self, config, params, batches, *, compile_model: bool = False, threads: int | None = None,
               seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch, self.config, self.threads = torch, config, threads or os.cpu_count()
    self.model = torch_unet(config, params)
    self.forward = torch.compile(self.model) if compile_model else self.model
    self.params = list(self.model.parameters())
    self.ema = [p.detach().clone() for p in self.params]
    t = config.train
    self.opt = torch.optim.AdamW(self.params, lr=t.learning_rate, betas=(0.9, 0.99), eps=1e-8,
                                 weight_decay=t.weight_decay)
    self.abar = torch.tensor(gaussian.GaussianDiffusion.from_config(config).alphas_cumprod, dtype=torch.float32)
    # NHWC device arrays -> NCHW torch tensors (np.array copies: np.asarray of a jax.Array is read-only).
    self.batches = [torch.from_numpy(np.array(b["image"]).transpose(0, 3, 1, 2).copy()) for b in batches]
    self.generator = torch.Generator().manual_seed(seed)
    self.calls = 0

  def __call__(self):
    torch, t = self.torch, self.config.train
    torch.set_num_threads(self.threads)  # per call: peers with other thread counts share the process
    x0 = self.batches[self.calls % len(self.batches)]
    steps = torch.randint(0, len(self.abar), (x0.shape[0],), generator=self.generator)
    noise = torch.randn(x0.shape, generator=self.generator)
    abar = self.abar[steps].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    loss = torch.nn.functional.mse_loss(self.forward(x_t, steps).sample, noise)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
    self.opt.step()
    decay = min(t.ema_decay, (1.0 + self.calls) / (10.0 + self.calls))
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - decay)  # pylint: disable=protected-access
    self.calls += 1
    return float(loss.detach())


def max_forward_difference(config, graphdef, params, batch) -> float:
  """Largest |ours - diffusers| of the network output on one batch: the two hold the same weights."""
  import torch  # pylint: disable=g-import-not-at-top
  x = np.array(batch["image"])
  t = np.linspace(0, config.diffusion.timesteps - 1, x.shape[0]).astype(np.int32)
  ours = jax.jit(lambda p, x, t: nnx.merge(graphdef, p)(x, t)[0])(params, x, t)
  model = torch_unet(config, params).eval()
  with torch.inference_mode():
    theirs = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t).long()).sample
  return float(np.max(np.abs(np.asarray(ours) - theirs.numpy().transpose(0, 2, 3, 1))))


def main():
  p = harness.parser(__doc__.splitlines()[0])
  p.add_argument("--no-torch-compile", action="store_true", help="time the eager peer only")
  workloads.add_config_flags(p, sizes=False)
  harness.add_torch_threads_flag(p)
  args = p.parse_args()
  harness.start(args, "Train images/s: ours vs PyTorch (diffusers UNet2DModel)")
  import torch  # pylint: disable=g-import-not-at-top
  threads = harness.torch_threads(args)
  torch.manual_seed(0)

  config = workloads.make_config("default", weight=0.0, default_batch=args.default_batch)
  ours = workloads.TrainStep(config)
  params = jax.device_get(ours.state["params"]["model"])  # before the first step donates the state
  difference = max_forward_difference(config, ours.exp.model_def, params, ours.batches[0])
  print(f"same weights: max |ours - diffusers| of the UNet output = {difference:.2e}", flush=True)
  steps = {"ours": ours,
           "ours + context (sorted)": workloads.TrainStep(workloads.make_config(
               "default", weight=0.1, solver="sorted", default_batch=args.default_batch))}
  compile_s = {name: harness.timed(step.compile)[1] for name, step in steps.items()}
  peers = [(f"torch eager, {n} thread{'s' * (n > 1)}", n, False) for n in threads]
  if not args.no_torch_compile:
    peers += [(f"torch.compile, {n} thread{'s' * (n > 1)}", n, True) for n in threads]
  notes = {"torch.compile": "not tried (--no-torch-compile)"}
  for name, n, compile_model in peers:
    try:
      peer = TorchTrainStep(config, params, ours.batches, compile_model=compile_model, threads=n)
      _, compile_s[name] = harness.timed(peer)  # the first call (torch.compile: compiles forward and backward)
      steps[name] = peer
      if compile_model:
        notes["torch.compile"] = "works"
    except Exception as e:  # pylint: disable=broad-except
      notes[name] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]
      print(f"{name}: {notes[name]}", flush=True)
  print(f"first calls (compilation included): {', '.join(f'{k} {v:.1f} s' for k, v in compile_s.items())}",
        flush=True)

  times = harness.interleave(steps, repeats=args.repeats, warmup=args.warmup)
  batch, rows = config.train.batch_size, []
  for name, ts in times.items():
    vs_ours = harness.compare(ts, times["ours"])  # ratio = this time / our time = our images/s / this
    vs_context = harness.compare(ts, times["ours + context (sorted)"])
    peer = name.startswith("torch")
    rows.append((name, vs_ours, vs_context, peer))
    harness.record(FIGURE, workload=name, batch=batch, image_size=config.data.image_size, repeats=args.repeats,
                   images_per_s=batch / vs_ours["median_s"], ours_over_this=vs_ours["ratio"],
                   ours_context_over_this=vs_context["ratio"], first_call_s=compile_s.get(name),
                   target=TARGET if peer else None, **{k: v for k, v in vs_ours.items() if k != "ratio"})
  harness.record(FIGURE, notes=notes, max_forward_difference=difference, torch_threads=threads,
                 omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
  print()
  harness.table(["workload", "median step", "images/s", "ours / this (images/s)", "per-round",
                 "ours + context / this", "target met? (ours / this >= 1.5)"])
  for name, vs_ours, vs_context, peer in rows:
    harness.row([name, harness.seconds(vs_ours["median_s"]), f"{batch / vs_ours['median_s']:.0f}",
                 f"{vs_ours['ratio']:.2f}", f"{vs_ours['paired_min']:.2f}-{vs_ours['paired_max']:.2f}",
                 f"{vs_context['ratio']:.2f}", harness.met(vs_ours["ratio"], TARGET, at_most=False) if peer else "-"])


if __name__ == "__main__":
  main()
