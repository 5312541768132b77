"""diffusers export: our UNet and diffusers' UNet2DModel agree on the exported weights, the scheduler has our
schedule, DDIMPipeline loads offline and reproduces our DDIM sampler, and restore_ema reads the EMA alone."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: nothing may be downloaded
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from configs import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax import checkpointing, families, main, models, train  # pylint: disable=wrong-import-position
from conprediff_jax.diffusion import samplers  # pylint: disable=wrong-import-position
from conprediff_jax.diffusion.gaussian import GaussianDiffusion  # pylint: disable=wrong-import-position
from conprediff_jax.export import diffusers_export as export  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*, class_conditional=False, rgb_two_blocks=False, three_levels=False):
  """8x8, 8 channels, mults (1, 2), one res block, 2-head attention at 4x4, grey; or the variants named."""
  config = smoke.get_config()
  config.data.image_size, config.data.channels = 8, 1
  m = config.model
  m.channels, m.channel_mults, m.num_res_blocks = 8, (1, 2), 1
  m.attention_resolutions, m.num_heads, m.num_groups = (4,), 2, 4
  m.class_conditional = class_conditional
  if rgb_two_blocks:
    config.data.channels, m.num_res_blocks = 3, 2
  if three_levels:  # attention in two down and two up blocks
    m.channel_mults, m.attention_resolutions = (1, 2, 2), (4, 2)
  return config


def _random_params(config, seed: int):
  """Parameters of the denoiser's shapes drawn in NumPy (no per-shape compiles): kernels ~ N(0, 1/fan_in), and
  biases, norm scales (around 1) and embeddings all off their init, so no zero bias or unit scale hides a slip."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      return rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
    return (1.0 if name == "scale" else 0.0) + 0.2 * rng.normal(size=shape)

  abstract = families.abstract_model(families.get(config))[1]
  return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), abstract)


def _denoiser_fn(config):
  """Jitted `(params, x, t, labels) -> output` of our UNet: one compile instead of op-by-op dispatch."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.build_denoiser(config, jax.random.key(0))))
  return jax.jit(lambda params, x, t, labels=None: nnx.merge(graphdef, params)(
      x, t, None if labels is None else {"label": labels})[0])


def _nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _load_unet(config, params, out_dir):
  """Exports, loads with diffusers and checks the layout: every tensor present once, same shapes, same count."""
  export.export_pipeline(config, params, str(out_dir))
  unet, info = diffusers.UNet2DModel.from_pretrained(str(out_dir), subfolder="unet", output_loading_info=True,
                                                     low_cpu_mem_usage=False)
  assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
  assert sum(p.numel() for p in unet.parameters()) == train.param_count(params)
  assert export.diffusers_state_dict_shapes(export.unet2d_config(config)) == {
      k: tuple(v.shape) for k, v in unet.state_dict().items()}
  return unet.eval()


def test_three_level_layout_loads_into_diffusers(tmp_path):
  config = _config(three_levels=True)
  assert export.unet2d_config(config)["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
  _load_unet(config, _random_params(config, seed=0), tmp_path)


@pytest.mark.parametrize("variant", ["plain", "class_conditional", "rgb_two_blocks"])
def test_unet_matches_diffusers(tmp_path, variant):
  config = _config(class_conditional=variant == "class_conditional", rgb_two_blocks=variant == "rgb_two_blocks")
  params = _random_params(config, seed=0)
  unet = _load_unet(config, params, tmp_path)

  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 8, 8, config.data.channels)).astype(np.float32)
  t = rng.integers(0, 1000, size=3)
  labels = rng.integers(0, config.data.num_classes + 1, size=3) if config.model.class_conditional else None  # +null
  ours = np.asarray(_denoiser_fn(config)(params, x, jnp.asarray(t, jnp.int32),
                                         None if labels is None else jnp.asarray(labels, jnp.int32)))
  with torch.no_grad():
    theirs = unet(_nchw(x), torch.from_numpy(t),
                  class_labels=None if labels is None else torch.from_numpy(labels)).sample.numpy()
  diff = np.abs(ours - theirs.transpose(0, 2, 3, 1)).max()
  print(f"{variant}: max |ours - diffusers| = {diff:.2e} (outputs up to {np.abs(ours).max():.2f})")
  assert diff < 1e-4


@pytest.mark.parametrize("schedule,timesteps,prediction", [("cosine", 1000, "eps"), ("linear", 1000, "v"),
                                                           ("linear", 250, "eps")])
def test_scheduler_has_our_schedule(schedule, timesteps, prediction):
  config = _config()
  config.diffusion.schedule, config.diffusion.timesteps, config.diffusion.prediction = schedule, timesteps, prediction
  scheduler = diffusers.DDIMScheduler.from_config(export.scheduler_config(config))
  np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), GaussianDiffusion.from_config(config).alphas_cumprod,
                             atol=1e-6)
  assert scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[prediction]
  scheduler.set_timesteps(50)
  np.testing.assert_array_equal(scheduler.timesteps.numpy(), samplers.timestep_sequence(timesteps, 50))


def test_pipeline_loads_offline_and_reproduces_our_ddim(tmp_path):
  # With steps == T, diffusers' step to t - T // steps is our step to the next timestep: the samplers coincide.
  config = _config()
  config.diffusion.timesteps, config.diffusion.prediction = 10, "v"
  params = _random_params(config, seed=2)
  export.export_pipeline(config, params, str(tmp_path))
  pipe = diffusers.DDIMPipeline.from_pretrained(str(tmp_path), low_cpu_mem_usage=False)
  pipe.set_progress_bar_config(disable=True)

  quick = pipe(batch_size=2, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
  assert quick.images.shape == (2, 8, 8, 1) and np.isfinite(quick.images).all()

  images = pipe(batch_size=2, num_inference_steps=10, eta=0.0, use_clipped_model_output=True, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
  x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0)).numpy().transpose(0, 2, 3, 1)
  denoiser = _denoiser_fn(config)
  ours = samplers.sample(lambda x, t: denoiser(params, x, t), GaussianDiffusion.from_config(config), jax.random.key(0),
                         x_T.shape, sampler="ddim", steps=10, eta=0.0, x_T=jnp.asarray(x_T))
  np.testing.assert_allclose(images, np.clip(np.asarray(ours) / 2 + 0.5, 0, 1), atol=1e-4)


def test_unet2d_config_refuses_what_diffusers_cannot_express():
  config = _config()
  config.model.channel_mults = (2, 2)
  with pytest.raises(ValueError, match="channel_mults"):
    export.unet2d_config(config)
  config = _config()
  config.model.attention_resolutions = (8,)  # width 8 here, 16 in the mid block: diffusers fixes the head width
  with pytest.raises(ValueError, match="one width"):
    export.unet2d_config(config)


def test_restore_ema_skips_context_head_and_optimizer(tmp_path):
  config = _config()
  assert config.context.weight > 0
  # The real train-state layout (context head, optax state), filled with random values instead of compiled inits.
  abstract_state = jax.eval_shape(functools.partial(train.init_state, train.make_experiment(config)),
                                  jax.random.key(0))
  assert "context" in abstract_state["params"]
  rng = np.random.default_rng(3)
  state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), abstract_state)
  manager = checkpointing.open_manager(str(tmp_path / "checkpoints"), max_to_keep=2)
  checkpointing.save(manager, 7, state, force=True)

  abstract = abstract_state["ema"]  # --mode=export below builds it from the config alone
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: device, abstract)
  fresh = checkpointing.open_manager(str(tmp_path / "checkpoints"), max_to_keep=2)
  for m in (manager, fresh):  # the manager that saved (StandardSave handler bound) and a new one
    restored = checkpointing.restore_ema(m, 7, abstract, shardings)
    assert jax.tree.structure(restored) == jax.tree.structure(state["ema"])
    jax.tree.map(np.testing.assert_array_equal, restored, state["ema"])

  # A config that builds another model (here class-conditional) fails loudly instead of half-restoring.
  cond = {**abstract, "class_embedding": {"embedding": jax.ShapeDtypeStruct((11, 32), jnp.float32)}}
  with pytest.raises(ValueError, match="class_embedding"):
    checkpointing.restore_ema(fresh, 7, cond, jax.tree.map(lambda _: device, cond))
  manager.close()
  fresh.close()

  out = main.export_from_workdir(config, str(tmp_path))
  assert out == str(tmp_path / "export")
  unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet", low_cpu_mem_usage=False)
  expected = export.to_diffusers_state_dict(state["ema"])
  for name, value in unet.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), expected[name])


def test_export_imports_neither_torch_nor_context(tmp_path):
  code = (
      "import sys\n"
      "import jax, numpy as np\n"
      "from configs import smoke\n"
      "from conprediff_jax.export import diffusers_export as export\n"
      "config = smoke.get_config()\n"
      "from conprediff_jax import families\n"
      "abstract = families.abstract_model(families.get(config))[1]\n"
      "params = jax.tree.map(lambda x: np.ones(x.shape, x.dtype), abstract)\n"
      "export.export_pipeline(config, params, sys.argv[1])\n"
      "bad = [m for m in sys.modules if m in ('torch', 'diffusers') or m.startswith('conprediff_jax.context')]\n"
      "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, check=True, timeout=120)
  assert os.path.exists(tmp_path / "unet" / export.WEIGHTS_NAME)


# ------------------------------------------------------------------------------------------------------------------
# Import: a diffusers UNet2DModel (made and saved by diffusers) read as our UNet.
# ------------------------------------------------------------------------------------------------------------------
IMPORTS = {
    "two_levels": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D",
                       "UpBlock2D"), attention_head_dim=8, norm_num_groups=4),
    "class_conditional_rgb": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                  layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                                  norm_num_groups=4, num_class_embeds=5),
    "three_levels": dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16, 16),
                         layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                         up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                         norm_num_groups=4),
}


def _saved_diffusers_unet(folder, seed: int, **kwargs):
  """A UNet2DModel with every tensor drawn off its init (no zero bias or unit norm scale hides a slip), saved as
  diffusers saves one (safetensors)."""
  from conprediff_jax.export import diffusers_import  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  unet = diffusers.UNet2DModel(**kwargs, norm_eps=1e-5).eval()
  with torch.no_grad():
    for p in unet.parameters():
      p.add_(0.2 * torch.randn_like(p))
  unet.save_pretrained(str(folder), safe_serialization=True)
  return unet, diffusers_import.config_overrides(diffusers_import.read_unet_config(str(folder)))


@pytest.mark.parametrize("variant", ["two_levels", *(pytest.param(v, marks=pytest.mark.slow)  # -m slow
                                                     for v in ("class_conditional_rgb", "three_levels"))])
def test_diffusers_unet_imports_exactly_and_round_trips(tmp_path, variant):
  """diffusers -> ours: the same outputs on random inputs (float32, relative error ~1e-6 expected); ours ->
  diffusers: every tensor bitwise the one we read."""
  from conprediff_jax import cli  # pylint: disable=g-import-not-at-top
  from conprediff_jax.export import diffusers_import  # pylint: disable=g-import-not-at-top
  unet, overrides = _saved_diffusers_unet(tmp_path, seed=3, **IMPORTS[variant])
  config = cli.override(_config(), overrides, "test")
  params = diffusers_import.load_unet_params(str(tmp_path), config)

  rng = np.random.default_rng(4)
  size, channels = config.data.image_size, config.data.channels
  x = rng.normal(size=(3, size, size, channels)).astype(np.float32)
  t = rng.integers(0, 1000, size=3)
  labels = rng.integers(0, config.data.num_classes + 1, size=3) if config.model.class_conditional else None
  ours = np.asarray(_denoiser_fn(config)(params, x, jnp.asarray(t, jnp.int32),
                                         None if labels is None else jnp.asarray(labels, jnp.int32)))
  with torch.no_grad():
    theirs = unet(_nchw(x), torch.from_numpy(t), class_labels=None if labels is None else torch.from_numpy(labels))
  theirs = theirs.sample.numpy().transpose(0, 2, 3, 1)
  error = np.abs(ours - theirs).max() / np.abs(theirs).max()
  print(f"{variant}: max |ours - diffusers| / max |diffusers| = {error:.2e}")
  assert error < 1e-5
  back = export.to_diffusers_state_dict(params, export.unet2d_config(config))
  original = {k: v.numpy() for k, v in unet.state_dict().items()}
  assert sorted(back) == sorted(original)
  for k, v in original.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_import_refuses_what_our_unet_cannot_express_by_name(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from conprediff_jax.export import diffusers_import  # pylint: disable=g-import-not-at-top
  base = {**IMPORTS["two_levels"], "down_block_types": list(IMPORTS["two_levels"]["down_block_types"]),
          "up_block_types": list(IMPORTS["two_levels"]["up_block_types"])}
  for change, named in (({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift='scale_shift'"),
                        ({"flip_sin_to_cos": False}, "flip_sin_to_cos=False"),
                        ({"down_block_types": ["DownBlock2D", "SkipDownBlock2D"]}, "SkipDownBlock2D"),
                        ({"attention_head_dim": 3}, "attention_head_dim=3"),
                        ({"out_channels": 2}, "out_channels=2")):
    with pytest.raises(ValueError, match=named):
      diffusers_import.config_overrides({**base, **change})
  (tmp_path / "unet").mkdir()
  (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **base}))
  (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
  with pytest.raises(ValueError, match=r"only safetensors are read, never pickles"):
    diffusers_import.unet_folder(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="holds no diffusers UNet"):
    diffusers_import.unet_folder(str(tmp_path / "unet" / "nothing"))


@pytest.mark.slow  # builds a run and traces the loss op by op: `python -m pytest -q -m slow tests`
def test_fine_tuning_starts_at_the_imported_models_loss_computed_in_torch(tmp_path):
  """A fresh run with model.init_from: its parameters and EMA are the imported ones, and the family's loss on a
  batch (v-prediction, Min-SNR-5) equals that loss recomputed in torch with diffusers' forward pass."""
  from conprediff_jax import cli  # pylint: disable=g-import-not-at-top
  unet, overrides = _saved_diffusers_unet(tmp_path / "hub", seed=5, **IMPORTS["two_levels"])
  config = cli.override(_config(), {**overrides, "model.init_from": str(tmp_path / "hub")}, "test")
  config.diffusion.prediction, config.diffusion.min_snr_gamma = "v", 5.0
  run = train.setup(config, str(tmp_path / "run"))
  state = jax.device_get(train.restore_or_init(run, config.seed))
  run.manager.close()
  for tree in (state["params"]["model"], state["ema"]):
    back = export.to_diffusers_state_dict(tree)
    for k, v in unet.state_dict().items():
      np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)

  family = run.exp.family
  x0 = np.random.default_rng(6).uniform(-1, 1, size=(4, 8, 8, 1)).astype(np.float32)
  key = jax.random.key(7)
  model = nnx.merge(run.exp.model_def, state["params"]["model"])
  ours = float(family.loss(model, None, {"image": jnp.asarray(x0)}, key).loss)
  k_t, k_noise, _ = jax.random.split(key, 3)
  t = np.asarray(jax.random.randint(k_t, (4,), 0, 1000))
  noise = np.asarray(jax.random.normal(k_noise, x0.shape), np.float64)
  abar = family.diffusion.alphas_cumprod[t][:, None, None, None]
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
  with torch.no_grad():
    out = unet(_nchw(x_t.astype(np.float32)), torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
  v = np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0
  snr = abar / (1 - abar)
  torch_loss = np.mean(np.minimum(snr, 5.0) / (snr + 1) * (out - v) ** 2)
  np.testing.assert_allclose(ours, torch_loss, rtol=1e-4)


@pytest.mark.slow  # trains 100 steps and samples in diffusers: `python -m pytest -q -m slow tests`
def test_the_worked_example_runs_as_written(tmp_path):
  """docs/pytorch.md's worked example, its files and commands read from the page and run in order in a fresh
  directory: a diffusers folder made with torch, imported, fine-tuned with the context loss, exported, sampled by
  DDIMPipeline."""
  import re  # pylint: disable=g-import-not-at-top
  page = open(os.path.join(REPO, "docs", "pytorch.md"), encoding="utf-8").read()
  section = page.split("## A worked example")[1].split("\n## ")[0]
  blocks = re.findall(r"```(python|bash)\n(.*?)```", section, re.S)
  for kind, body in blocks:
    if kind == "python":  # a file, named by its first line's comment
      (tmp_path / body.split(":")[0].removeprefix("# ").strip()).write_text(body)
  commands = [line.split("   #")[0] for line in blocks[1][1].replace("\\\n", " ").splitlines() if line.strip()]
  assert len(commands) == 5
  env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
  outputs = []
  for command in commands:
    done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    outputs.append(done.stdout)
  assert "701,345 parameters, every tensor matched" in outputs[1]
  printed = outputs[1].splitlines()[-1].split()  # the model flags the page passes are those convert printed
  assert all(flag.replace("'", "") in commands[2].replace("'", "") for flag in printed
             if flag.startswith("--config.") and "init_from" not in flag)
  assert outputs[4].startswith("(4, 16, 16, 1)")
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top
  exported = UNet2DModel.from_pretrained(tmp_path / "workdirs" / "finetune" / "export" / "unet")
  assert sum(p.numel() for p in exported.parameters()) == 701_345
