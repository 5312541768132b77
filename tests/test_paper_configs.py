"""The paper-scale configs (configs/celebahq*.py, cifar10.py, imagenet_inpaint.py, the latent ffhq.py, lsun_*.py,
coco_t2i.py, the DiTs dit_xl2.py and celebahq_dit.py, and their autoencoders in paper_kl.py): valid, built at full size
without computing anything, one-line errors naming the prepare command when their data is missing, and trained one
step and sampled one step at reduced size (same structure: levels, bf16, context strides)."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from configs import celebahq, celebahq_dit, celebahq_inpaint, celebahq_tokens, celebahq_vq, cifar10, coco_t2i
from configs import dit_xl2, ffhq, imagenet_inpaint, lsun_bedroom, lsun_church, paper_kl
from conprediff_jax import config_validation, families, sampling, train
from conprediff_jax import data as data_lib
from tests.conftest import make_random_workdir, random_lpips_weights

pytestmark = pytest.mark.xdist_group("test_paper_configs")


def test_full_size_configs_are_valid_and_build(tmp_path):
  vq = celebahq_vq.get_config()
  vq.data.data_dir = str(tmp_path)  # validation wants an existing TFDS data_dir; nothing is read here
  vq.loss.lpips_weights = random_lpips_weights(tmp_path / "lpips_vgg.safetensors")  # the user's ImageNet weights
  families.validate(vq, num_devices=8, process_count=2)
  _, vq_params, vq_buffers = families.abstract_model(families.get(vq))
  assert 10e6 < train.param_count(vq_params) < 100e6
  assert jax.tree.leaves(vq_buffers["codebook"])[0].shape == (1024, 64)

  (tmp_path / "config.json").write_text(vq.to_json_best_effort())  # all a token model's shapes need
  os.makedirs(tmp_path / "checkpoints")
  tokens = celebahq_tokens.get_config()
  tokens.data.data_dir, tokens.first_stage.workdir = str(tmp_path), str(tmp_path)
  families.validate(tokens, num_devices=8, process_count=2)
  family = families.get(tokens)
  assert family.feature_spec() == families.FeatureSpec(grid=16, features=512, targets=64)
  _, params, _ = families.abstract_model(family)
  assert 40e6 < train.param_count(params) < 70e6


def _reduced(config):
  """Digits at 64x64 RGB: the same levels (64 -> 4x4 tokens), dtypes and strides, tiny widths."""
  config.data.update(name="digits", tfds_name="", image_size=64, channels=3, num_classes=10, split="train")
  config.train.batch_size, config.sample.num_images = 8, 4
  return config


@pytest.mark.slow  # ~15-30 s of compiling a five-level network: run by `pytest -m slow` (CI runs both commands)
def test_reduced_size_trains_one_step_and_decodes(tmp_path):
  vq = _reduced(celebahq_vq.get_config())
  vq.model.update(channels=8, num_groups=4, codebook_size=32, code_dim=8, num_res_blocks=1)
  vq.loss.lpips_weights = random_lpips_weights(tmp_path / "lpips_vgg.safetensors")
  vq.eval.split = "train[:8]"
  tokenizer = make_random_workdir(str(tmp_path), vq)
  tokens = _reduced(celebahq_tokens.get_config())
  tokens.first_stage.workdir = tokenizer
  tokens.model.update(width=16, depth=1, num_heads=2)
  tokens.sample.steps = 1
  families.validate(tokens, num_devices=1)

  exp = train.make_experiment(tokens)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32)
  _, metrics = jax.jit(functools.partial(train.train_step, exp))(
      state, {"image": images}, jax.random.key(1), exp.first_stage.weights)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0

  sample_fn = sampling.make_sample_fn(exp.family, exp.model_def, 4, first_stage_def=exp.first_stage_def)
  out = np.asarray(sample_fn(state["ema"], exp.first_stage.weights, jax.random.key(2), None))
  assert out.shape == (4, 64, 64, 3) and np.all(np.abs(out) <= 1) and out.std() > 0
  assert json.loads((tmp_path / "config.json").read_text())["family"] == "autoencoder"


PIXEL = {"cifar10": (cifar10, 30e6, 40e6), "celebahq_inpaint": (celebahq_inpaint, 100e6, 150e6),
         "imagenet_inpaint": (imagenet_inpaint, 400e6, 600e6)}


@pytest.mark.parametrize("name", PIXEL)
def test_pixel_configs_are_valid_build_and_name_the_prepare_command(tmp_path, name):
  module, low, high = PIXEL[name]
  config = module.get_config()
  config.data.data_dir = str(tmp_path)  # exists, holds nothing
  families.validate(config, num_devices=8, process_count=2)
  _, params, _ = families.abstract_model(families.get(config))
  assert low < train.param_count(params) < high
  with pytest.raises(FileNotFoundError) as missing:
    data_lib.make_source(config.data)
  message = str(missing.value)
  assert "\n" not in message and f"--name={config.data.tfds_name}" in message
  assert "python -m conprediff_jax.data.prepare --images=<folder>" in message


@pytest.mark.slow  # compiles three six-level networks: `python -m pytest -q -m slow tests`
@pytest.mark.parametrize("name", PIXEL)
def test_pixel_configs_train_one_step_and_sample_one_at_reduced_size(name):
  config = PIXEL[name][0].get_config()
  size = 64 if len(config.model.channel_mults) > 4 else 32  # every level and attention resolution kept
  config.data.update(name="digits", tfds_name="", image_size=size, channels=3, split="train")
  config.data.num_classes = 10 if config.model.class_conditional else config.data.num_classes
  config.model.update(channels=8, num_groups=4, num_heads=2, num_res_blocks=1)
  config.train.batch_size, config.sample.steps = 4, 1
  config.mesh.shape = (-1, 1)  # one device
  families.validate(config, num_devices=1)
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype(np.float32),
           "label": np.arange(4, dtype=np.int32)}
  _, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1), None)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0
  cond = exp.family.sample_cond(2)
  out = np.asarray(sampling.make_sample_fn(exp.family, exp.model_def, 2)(state["ema"], None, jax.random.key(2), cond))
  assert out.shape == (2, size, size, 3) and np.all(np.abs(out) <= 1) and out.std() > 0


# task -> (config module, UNet parameter range at full size, latent grid)
LATENT = {"celebahq": (celebahq, 250e6, 300e6, 64), "ffhq": (ffhq, 250e6, 300e6, 64),
          "lsun_church": (lsun_church, 230e6, 280e6, 32), "lsun_bedroom": (lsun_bedroom, 250e6, 300e6, 64),
          "coco": (coco_t2i, 800e6, 950e6, 32)}


def _latent_config(task, folder, kl, module=None):
  """The task's latent config (or `module`'s) over a stand-in first stage in `folder` (its autoencoder's
  config.json, no weights needed to build), with captions where it reads them."""
  (folder / "config.json").write_text(kl.to_json_best_effort())
  os.makedirs(folder / "checkpoints", exist_ok=True)
  config = (module or LATENT[task][0]).get_config()
  config.data.data_dir, config.first_stage.workdir = str(folder), str(folder)
  if config.model.text_conditional:
    (folder / "captions.txt").write_text("a bus\n")
    config.data.captions = str(folder / "captions.txt")
  return config


@pytest.mark.parametrize("task", ["celebahq", *(pytest.param(t, marks=pytest.mark.slow)  # the others: -m slow
                                               for t in ("ffhq", "lsun_church", "lsun_bedroom", "coco"))])
def test_latent_configs_are_valid_build_and_name_what_is_missing(tmp_path, task):
  module, low, high, grid = LATENT[task]
  kl = paper_kl.get_config(task)
  kl.data.data_dir = str(tmp_path)
  kl.loss.lpips_weights = random_lpips_weights(tmp_path / "lpips_vgg.safetensors")
  families.validate(kl, num_devices=8, process_count=2)
  config = _latent_config(task, tmp_path, kl)
  families.validate(config, num_devices=8, process_count=2)
  family = families.get(config)
  assert family.feature_spec().grid == grid and family.feature_spec().targets == kl.model.latent_channels
  assert low < train.param_count(families.abstract_model(family)[1]) < high
  with pytest.raises(FileNotFoundError) as missing:  # the images, for the autoencoder and for the latent model
    data_lib.make_source(config.data)
  assert "\n" not in str(missing.value) and f"--name={config.data.tfds_name}" in str(missing.value)
  untrained = module.get_config()  # as a new user runs it: no autoencoder trained yet
  untrained.data.data_dir, untrained.data.captions = str(tmp_path), config.data.captions
  with pytest.raises(config_validation.ConfigError, match=r"^config.first_stage.workdir: 'workdirs/.*_kl' holds no "
                                                          r"trained KL autoencoder.*configs/paper_kl.py:<task>"):
    families.validate(untrained, num_devices=8, process_count=2)


@pytest.mark.slow  # compiles two latent UNets and their autoencoders' decoders: `python -m pytest -q -m slow tests`
@pytest.mark.parametrize("task", ["lsun_church", "coco"])
def test_latent_configs_train_one_step_and_sample_one_at_reduced_size(tmp_path, task):
  """Every level kept, widths cut: a random autoencoder of digits at the smallest size whose latent grid still has
  every UNet level (attention resolutions scaled with it), then the latent UNet (with its text encoder for COCO)
  trains one step with the context loss and samples decoded images."""
  levels = len(LATENT[task][0].get_config().model.channel_mults)
  factor = paper_kl.paper.LATENT_DATA[task][1]
  size = factor * 2 ** (levels - 1)
  kl = paper_kl.get_config(task)
  kl.data.update(name="digits", tfds_name="", image_size=size, channels=3, split="train", num_classes=10)
  kl.model.update(channels=8, num_groups=4, num_res_blocks=1)
  kl.loss.lpips_weights = random_lpips_weights(tmp_path / "lpips_vgg.safetensors")
  kl.eval.split = "train[:8]"
  config = _latent_config(task, tmp_path, kl)
  make_random_workdir(str(tmp_path), kl)
  config.data.update(name="digits", tfds_name="", image_size=size, channels=3, split="train")
  config.model.update(channels=8, num_groups=4, num_heads=2, num_res_blocks=1,
                      attention_resolutions=tuple(r * size // 256 for r in config.model.attention_resolutions))
  config.text.update(width=16, depth=1, num_heads=2)
  config.train.batch_size, config.sample.steps = 4, 1
  config.mesh.shape = (-1, 1)  # one device
  families.validate(config, num_devices=1)
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype(np.float32)}
  if config.model.text_conditional:
    batch["text_tokens"] = np.random.default_rng(1).integers(1, 200, (4, config.text.max_length), dtype=np.int32)
  _, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1),
                                                                exp.first_stage.weights)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0
  cond = exp.family.sample_cond(2)
  out = np.asarray(sampling.make_sample_fn(exp.family, exp.model_def, 2, first_stage_def=exp.first_stage_def)(
      state["ema"], exp.first_stage.weights, jax.random.key(2), cond))
  assert out.shape == (2, size, size, 3) and np.all(np.abs(out) <= 1) and out.std() > 0


# The latent DiTs: config -> (module, task, parameter range at full size, token grid)
DIT = {"dit_xl2": (dit_xl2, "imagenet", 670e6, 676e6, 16), "celebahq_dit": (celebahq_dit, "celebahq", 128e6, 131e6, 32)}


@pytest.mark.parametrize("name", DIT)
def test_latent_dits_are_valid_and_build_at_the_dit_papers_size(tmp_path, name):
  module, task, low, high, grid = DIT[name]
  kl = paper_kl.get_config(task)
  config = _latent_config(task, tmp_path, kl, module)
  config.data.data_dir = str(tmp_path)
  families.validate(config, num_devices=8, process_count=2)
  family = families.get(config)
  spec = family.feature_spec()
  assert (spec.grid, spec.targets) == (grid, 4 * kl.model.latent_channels)  # 2x2 latent patches per token
  assert low < train.param_count(families.abstract_model(family)[1]) < high


@pytest.mark.slow  # compiles a DiT and its autoencoder's decoder: `python -m pytest -q -m slow tests`
def test_dit_xl2_trains_one_step_and_samples_one_at_reduced_size(tmp_path):
  """Its structure at a width of 32 and 2 blocks: class-conditional, bf16, 2x2 patches of f8 latents, guidance."""
  kl = paper_kl.get_config("imagenet")
  kl.data.update(name="digits", tfds_name="", image_size=64, channels=3, split="train", num_classes=10)
  kl.model.update(channels=8, num_groups=4, num_res_blocks=1)
  kl.loss.lpips_weights = random_lpips_weights(tmp_path / "lpips_vgg.safetensors")
  config = _latent_config("imagenet", tmp_path, kl, dit_xl2)
  make_random_workdir(str(tmp_path), kl)
  config.data.update(name="digits", tfds_name="", image_size=64, channels=3, split="train", num_classes=10)
  config.model.update(width=32, depth=2, num_heads=2)
  config.train.batch_size, config.sample.steps = 4, 2
  config.mesh.shape = (-1, 1)
  families.validate(config, num_devices=1)
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
           "label": np.arange(4, dtype=np.int32)}
  _, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1),
                                                                exp.first_stage.weights)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0
  out = np.asarray(sampling.make_sample_fn(exp.family, exp.model_def, 2, first_stage_def=exp.first_stage_def)(
      state["ema"], exp.first_stage.weights, jax.random.key(2), exp.family.sample_cond(2)))
  assert out.shape == (2, 64, 64, 3) and np.all(np.abs(out) <= 1) and out.std() > 0
