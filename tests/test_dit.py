"""The DiT backbone (models/dit.py) against diffusers' DiTTransformer2DModel on torch-made weights: positions,
parameter counts at the DiT paper's sizes, forward equality, and import/export round trips (export/diffusers_dit.py);
and its config rules. The conformance test (tests/test_families.py, "gaussian_dit") trains, shards, checkpoints
and samples it through the trainer."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: nothing may be downloaded

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conprediff_jax import convert, export, families
from conprediff_jax.config_validation import ConfigError
from conprediff_jax.export import diffusers_dit
from conprediff_jax.models import dit
from configs import default

diffusers = pytest.importorskip("diffusers")


def _config(**model):
  config = default.get_config()
  config.data.update(image_size=8, channels=3, num_classes=5)
  config.model.update({"name": "dit", "patch_size": 2, "width": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 4,
                       **model})
  return config


def _randomise(module: nnx.Module, seed: int) -> dict:
  """The module's parameters replaced by random draws (the zero-initialised adaLN and output layers included)."""
  params = nnx.state(module, nnx.Param).to_pure_dict()
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _ours(config, params):
  family = families.get(config)
  graphdef, _, _ = families.abstract_model(family)
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def _torch_dit(config_dict, seed, tied=True):
  """A diffusers DiT of random draws; `tied`: every block's embedder copy is block 0's, as in released DiTs."""
  torch.manual_seed(seed)
  model = diffusers.DiTTransformer2DModel(**config_dict).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.2 * torch.randn_like(p))
    for block in model.transformer_blocks[1:] if tied else ():
      block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
  return model


def _forward_torch(model, x, t, labels):
  with torch.no_grad():
    out = model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2)), timestep=torch.from_numpy(np.asarray(t)),
                class_labels=torch.from_numpy(np.asarray(labels))).sample
  return out.numpy().transpose(0, 2, 3, 1)


def _inputs(config, batch=4):
  rng = np.random.default_rng(0)
  d = config.data
  x = rng.normal(size=(batch, d.image_size, d.image_size, d.channels)).astype(np.float32)
  return x, np.array([0, 17, 500, 999][:batch]), np.array([0, 4, 2, 5][:batch])  # 5: the null class


def test_positions_are_diffusers_sincos():
  from diffusers.models.embeddings import get_2d_sincos_pos_embed  # pylint: disable=g-import-not-at-top
  for width, grid in ((32, 4), (1152, 16)):
    theirs = get_2d_sincos_pos_embed(width, grid, base_size=grid, output_type="pt").numpy()
    np.testing.assert_allclose(dit.sincos_positions(width, grid), theirs, atol=1e-6)


@pytest.mark.parametrize("size,paper_millions", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_parameter_counts_are_the_dit_papers(size, paper_millions):
  """DiT-{S,B,L,XL}/2 on 32x32x4 latents with 1,000 classes, against diffusers' model of the same shape built on
  the meta device: theirs keeps a copy of the embedders per block and a learned variance's half we do not
  predict; less those, the counts are equal, and within 0.5% of the DiT paper's (Table 1, given to 3 digits)."""
  width, depth, heads = dit.SIZES[size]
  config = default.get_config()
  config.data.update(image_size=32, channels=4, num_classes=1000)
  config.model.update(name="dit", patch_size=2, width=width, depth=depth, num_heads=heads, mlp_ratio=4,
                      class_conditional=True)
  ours = sum(x.size for x in jax.tree.leaves(families.abstract_model(families.get(config))[1]))
  with torch.device("meta"):
    theirs = diffusers.DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads,
                                             in_channels=4, out_channels=8, num_layers=depth, sample_size=32,
                                             patch_size=2, num_embeds_ada_norm=1000)
  count = lambda module: sum(p.numel() for p in module.parameters())
  copies = (depth - 1) * count(theirs.transformer_blocks[0].norm1.emb)
  variance = 2 * 2 * 4 * (width + 1)  # proj_out_2's rows for the learned sigma
  assert ours == count(theirs) - copies - variance
  assert abs((ours + variance) / 1e6 - paper_millions) / paper_millions < 0.005


def test_imports_a_diffusers_dit_and_matches_its_forward_pass_and_exports_it_back(tmp_path):
  """Class-conditional, with a learned variance: ours equals the mean half of theirs at every class (and the null
  one) and timestep; exported again, the state dict is theirs less the variance rows, tensor for tensor."""
  config = _config(class_conditional=True)
  found = {**diffusers_dit.transformer_config(config), "out_channels": 6}
  theirs = _torch_dit(found, seed=1)
  theirs.save_pretrained(tmp_path / "transformer")
  family = families.get(config)
  command = convert.import_command(str(tmp_path), default.get_config())  # what a user runs first
  assert "every tensor matched" in command and "--config.model.name=dit" in command
  assert "--config.data.num_classes=5" in command
  params = export.import_weights(family, str(tmp_path))
  x, t, labels = _inputs(config)
  out, features = _ours(config, params)(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)})
  np.testing.assert_allclose(np.asarray(out), _forward_torch(theirs, x, t, labels)[..., :3], atol=2e-4, rtol=1e-4)
  assert features.shape == (4, 4, 4, 32)
  back = diffusers_dit.to_state_dict(config, params)
  state = {k: v.numpy() for k, v in theirs.state_dict().items()}
  assert back.keys() == state.keys()
  for name, value in back.items():
    expected = state[name]
    if name.startswith("proj_out_2"):  # (p, q, 2C) rows: the mean's first C of each patch position
      expected = expected.reshape(2, 2, 6, *expected.shape[1:])[:, :, :3].reshape(value.shape)
    np.testing.assert_array_equal(value, expected, err_msg=name)


def test_an_unconditional_dit_exports_to_a_folder_diffusers_loads_and_comes_back_identical(tmp_path):
  config = _config()
  config.data.num_classes = 0
  family = families.get(config)
  params = _randomise(family.build(nnx.Rngs(0)), seed=2)
  export.export(family, params, str(tmp_path / "export"))
  loaded = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "export" / "transformer").eval()
  x, t, _ = _inputs(config)
  ours, _ = _ours(config, params)(jnp.asarray(x), jnp.asarray(t))
  for label in (0, 1):  # one class embedded as zero, and the null row: the same output
    theirs = _forward_torch(loaded, x, t, np.full(4, label))
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=1e-4)
  scheduler = json.load(open(tmp_path / "export" / "scheduler" / "scheduler_config.json", encoding="utf-8"))
  assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["prediction_type"] == "v_prediction"
  assert not os.path.exists(tmp_path / "export" / "model_index.json")  # no diffusers pipeline runs a pixel DiT
  again = export.import_weights(family, str(tmp_path / "export"))
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))


def test_a_class_conditional_latent_dit_exports_a_dit_pipeline_that_diffusers_runs(tmp_path):
  """transformer/, vae/ (our AutoencoderKL), scheduler/ and model_index.json: DiTPipeline loads it with no code of
  ours and draws images (guidance off: the pipeline's null class is 1000); a text- or mask-conditioned DiT is
  refused in one line before anything is written."""
  from configs import digits_kl  # pylint: disable=g-import-not-at-top
  from tests.conftest import make_random_workdir  # pylint: disable=g-import-not-at-top
  kl = digits_kl.get_config()
  kl.data.update(image_size=16, channels=3)
  kl.model.update(channels=8, channel_mults=(1, 2), num_groups=4)  # 16x16x3 -> 8x8x2 latents
  config = _config(class_conditional=True)
  config.data.image_size = 16
  config.first_stage.update(workdir=make_random_workdir(str(tmp_path / "kl"), kl), config="", scaling_factor=0.5)
  family = families.get(config)
  params = _randomise(family.build(nnx.Rngs(0)), seed=4)
  out = str(tmp_path / "export")
  export.export(family, params, out)
  assert json.load(open(os.path.join(out, "model_index.json"), encoding="utf-8"))["_class_name"] == "DiTPipeline"
  pipe = diffusers.DiTPipeline.from_pretrained(out)
  images = pipe(class_labels=[0, 3], guidance_scale=1.0, num_inference_steps=2, output_type="np").images
  assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
  for key in ("text_conditional", "mask_conditional"):
    refused = _config(**{key: True})
    with pytest.raises(ValueError, match="text- or mask-conditioned DiT") as error:
      export.export(families.get(refused), {}, str(tmp_path / key))
    assert "\n" not in str(error.value) and not os.path.exists(tmp_path / key)


def test_import_refuses_blocks_whose_embedders_differ_and_a_mismatched_config(tmp_path):
  config = _config(class_conditional=True)
  theirs = _torch_dit(diffusers_dit.transformer_config(config), seed=3, tied=False)
  theirs.save_pretrained(tmp_path)  # block 1's embedder copy differs from block 0's
  with pytest.raises(ValueError, match="block 1's .* differs from block 0's"):
    export.import_weights(families.get(config), str(tmp_path))
  with pytest.raises(ValueError, match="is a DiT with model.depth=2") as error:
    export.import_weights(families.get(_config(class_conditional=True, depth=3)), str(tmp_path))
  assert "\n" not in str(error.value)
  other = tmp_path / "other"  # a folder of a class that imports as no denoiser here
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
  (other / "diffusion_pytorch_model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match="a ControlNetModel; only UNet2DModel and UNet2DConditionModel") as error:
    export.import_overrides(str(other))
  assert "\n" not in str(error.value)


def test_the_context_head_reads_the_patch_grid_and_its_targets_are_the_patches():
  config = _config()
  family = families.get(config)
  spec = family.feature_spec()
  assert (spec.grid, spec.features, spec.targets) == (4, 32, 2 * 2 * 3)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)
  out = family.loss(family.build(nnx.Rngs(0)), None, {"image": x}, jax.random.key(0))
  assert out.features.shape == (2, 4, 4, 32) and out.targets.shape == (2, 4, 4, 12)
  np.testing.assert_array_equal(out.targets[1, 2, 3], x[1, 4:6, 6:8].reshape(-1))  # token (2, 3)'s 2x2 patch


@pytest.mark.parametrize("override,message", [
    ({"model.patch_size": 3}, "config.model.patch_size: 3 does not divide the 8x8 grid"),
    ({"model.num_heads": 3}, "config.model.num_heads: 3 does not divide the DiT width 32"),
    ({"model.name": "ditt"}, "config.model.name: 'ditt'"),
    ({"context.strides": (1, 4)}, "config.context.strides: (1, 4) reaches outside the 4x4 grid"),
])
def test_bad_dit_configs_are_one_line(override, message):
  config = _config()
  for key, value in override.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(ConfigError) as error:
    families.validate(config, num_devices=1, process_count=1)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)
