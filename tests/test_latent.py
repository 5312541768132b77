"""Latent diffusion (families/latent.py): the Gaussian family on a frozen KL autoencoder's scaled latents, its
train step, and its export as a diffusers LDMPipeline that samples what ours does."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conprediff_jax import config_validation, export, families, train
from conprediff_jax.data.digits import load_digits
from conprediff_jax.diffusion import samplers
from conprediff_jax.families import latent as latent_lib
from tests.conftest import make_random_workdir, tiny_config


@pytest.fixture(scope="module")
def autoencoder_workdir(tmp_path_factory):
  """A random KL autoencoder of 8x8 grey images: 4x4x2 latents."""
  config = tiny_config("kl_autoencoder")
  config.model.channel_mults = (1, 2)
  return make_random_workdir(str(tmp_path_factory.mktemp("kl")), config)


def _latent_config(workdir, **diffusion):
  config = tiny_config()
  config.first_stage.workdir = workdir
  config.diffusion.update(diffusion)
  return config


@pytest.mark.slow  # `python -m pytest -q -m slow tests`
def test_the_denoiser_sees_scaled_posterior_samples_on_the_latent_grid(autoencoder_workdir):
  config = _latent_config(autoencoder_workdir)
  families.validate(config, num_devices=1)
  family = families.get(config)
  stage = family.first_stage()
  autoencoder = nnx.merge(stage.graphdef, stage.weights)
  real = load_digits(8)[0]
  # The scaling factor: 1 / std of the posterior means of the autoencoder's training images, in float64.
  want = 1 / np.std(np.asarray(jax.jit(lambda x: autoencoder.encode(x)[0])(jnp.asarray(real[:1024])), np.float64))
  np.testing.assert_allclose(family.latent.scaling_factor, want, rtol=1e-4)
  assert family.feature_spec() == families.FeatureSpec(grid=4, features=8, targets=2)

  images, key = jnp.asarray(real[:4]), jax.random.key(3)
  model = family.build(nnx.Rngs(0))
  targets, features = nnx.jit(lambda m, a, x: (lambda o: (o.targets, o.features))(
      family.loss(m, a, {"image": x}, key)))(model, autoencoder, images)
  mean, logvar = autoencoder.encode(images)
  noise = jax.random.normal(jax.random.fold_in(key, latent_lib.ENCODE_STREAM), mean.shape)
  np.testing.assert_allclose(targets, (mean + np.exp(0.5 * logvar) * noise) * want, rtol=1e-4, atol=1e-5)
  assert features.shape[:3] == (4, 4, 4)


@pytest.mark.slow  # compiles a train step: `python -m pytest -q -m slow tests`
def test_a_latent_model_takes_a_train_step_with_the_context_loss_on_the_latent_grid(autoencoder_workdir):
  config = _latent_config(autoencoder_workdir)
  real = load_digits(8)[0]
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  _, metrics = jax.jit(functools.partial(train.train_step, exp))(
      state, {"image": jnp.asarray(real[:8])}, jax.random.key(1), exp.first_stage.weights)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0


def test_a_latent_config_needs_a_kl_autoencoder(tmp_path, tokenizer_workdir):
  for workdir, problem in ((str(tmp_path), "holds no trained KL autoencoder"),
                           (tokenizer_workdir, "holds a 'autoencoder' run, not a KL autoencoder")):
    with pytest.raises(config_validation.ConfigError, match=rf"^config.first_stage.workdir: .*{problem}.*; train it "
                                                           r"first: python -m conprediff_jax.main --config=<its "
                                                           r"autoencoder config: configs/digits_kl.py"):
      families.validate(_latent_config(workdir), num_devices=1)


@pytest.mark.slow  # compiles our sampler and runs diffusers': `python -m pytest -q -m slow tests`
def test_the_exported_ldm_pipeline_samples_what_ours_does(tmp_path, autoencoder_workdir):
  """diffusers' LDMPipeline on the exported folder (UNet, AutoencoderKL, DDIM scheduler; no code of ours) draws the
  same digits as our DDIM from the same initial latents (steps == T, where the two DDIMs coincide)."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  config = _latent_config(autoencoder_workdir, timesteps=10, prediction="v")
  make_random_workdir(str(tmp_path / "run"), config)
  from conprediff_jax import sampling  # pylint: disable=g-import-not-at-top
  trained = sampling.load_latest_ema(config, str(tmp_path / "run"))
  family = trained.family
  out = export.export(family, jax.device_get(trained.weights), str(tmp_path / "export"))
  pipe = diffusers.LDMPipeline.from_pretrained(out, low_cpu_mem_usage=False)
  pipe.set_progress_bar_config(disable=True)
  theirs = pipe(batch_size=2, num_inference_steps=10, eta=0.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
  x_T = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(0)).numpy().transpose(0, 2, 3, 1)
  model = nnx.merge(trained.model_def, trained.weights)
  latents = samplers.sample(lambda x, t: model(x, t)[0], family.diffusion, jax.random.key(0), x_T.shape,
                            sampler="ddim", steps=10, eta=0.0, clip_x0=False, x_T=jnp.asarray(x_T))
  autoencoder = nnx.merge(trained.first_stage_def, trained.first_stage_weights)
  ours = np.asarray(family.latent.decode(autoencoder, latents)) / 2 + 0.5
  assert theirs.shape == (2, 8, 8, 1) and np.abs(ours - 0.5).max() > 0.05  # not a blank image
  np.testing.assert_allclose(theirs, ours, atol=1e-4)


@pytest.mark.slow  # compiles our guided sampler and runs diffusers': `python -m pytest -q -m slow tests`
def test_the_exported_text_to_image_latent_model_samples_what_ours_does(tmp_path, autoencoder_workdir):
  """A text-conditional latent model (configs/coco_t2i.py's path) exports with its autoencoder as `vae/`, and
  export/torch_text.py's guided DDIM decodes the images ours does."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  torch = pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  from conprediff_jax import conditioning, sampling  # pylint: disable=g-import-not-at-top
  from conprediff_jax.export import torch_text  # pylint: disable=g-import-not-at-top
  config = _latent_config(autoencoder_workdir, timesteps=10, prediction="v")
  config.model.text_conditional = True
  config.text.update(max_length=8, width=16, depth=1, num_heads=2)
  make_random_workdir(str(tmp_path / "run"), config)
  trained = sampling.load_latest_ema(config, str(tmp_path / "run"))
  family = trained.family
  out = export.export(family, jax.device_get(trained.weights), str(tmp_path / "export"))
  prompts, scale = ["the digit 4", "seven"], 3.0
  x_T = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(0))
  theirs = torch_text.TextToImage(out)(prompts, guidance_scale=scale, num_inference_steps=10, latents=x_T)

  model = nnx.merge(trained.model_def, trained.weights)
  cond = {"text_tokens": jnp.asarray(conditioning.encode_text(prompts, config.text.max_length))}
  guided = conditioning.classifier_free(lambda x, t, c: model(x, t, c)[0], cond, scale)
  latents = samplers.sample(guided, family.diffusion, jax.random.key(0), (2, 4, 4, 2), sampler="ddim", steps=10,
                            eta=0.0, clip_x0=False, x_T=jnp.asarray(x_T.numpy().transpose(0, 2, 3, 1)))
  autoencoder = nnx.merge(trained.first_stage_def, trained.first_stage_weights)
  ours = np.clip(np.asarray(family.latent.decode(autoencoder, latents)) / 2 + 0.5, 0, 1)
  assert theirs.shape == (2, 8, 8, 1) and np.abs(ours - 0.5).max() > 0.05  # not a blank image
  print(f"guided latent DDIM-10, torch vs ours: max abs {np.abs(theirs - ours).max():.2e}")
  np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_a_diffusers_autoencoder_kl_folder_serves_as_the_first_stage(tmp_path):
  """config.first_stage.workdir may name a diffusers AutoencoderKL folder (e.g. a Stable Diffusion VAE): it is
  imported tensor by tensor, decodes what diffusers decodes, and its own scaling factor is used."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  kl = tiny_config("kl_autoencoder")
  kl.model.channel_mults = (1, 2)
  vae = diffusers.AutoencoderKL(**diffusers_export.autoencoder_kl_config(kl, 0.37)).eval()
  with torch.no_grad():
    for p in vae.parameters():
      p.add_(0.1 * torch.randn_like(p))
  vae.save_pretrained(str(tmp_path), safe_serialization=True)
  config = _latent_config(str(tmp_path))
  families.validate(config, num_devices=1)
  family = families.get(config)
  stage = family.first_stage()
  assert family.latent.scaling_factor == pytest.approx(0.37) and stage.source.endswith("(diffusers)")
  from conprediff_jax import convert  # pylint: disable=g-import-not-at-top
  command = convert.import_command(str(tmp_path), config)  # what a user runs first: the latent model's command
  assert "AutoencoderKL" in command and "scaling factor 0.37" in command and "configs/digits_latent.py" in command
  latents = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype(np.float32)
  ours = np.asarray(family.latent.decode(nnx.merge(stage.graphdef, stage.weights), jnp.asarray(latents)))
  with torch.no_grad():
    theirs = vae.decode(torch.from_numpy(latents.transpose(0, 3, 1, 2)) / 0.37).sample.clamp(-1, 1).numpy()
  np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=1e-5)
