"""Export of a text-conditional UNet: diffusers' UNet2DConditionModel computes what ours does from the exported
weights, export/torch_text.py's encoder computes our text encoder's context, and its guided DDIM loop draws the
images our sampler draws."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: nothing may be downloaded
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from configs import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax import conditioning, families, models, train  # pylint: disable=wrong-import-position
import conprediff_jax.export as exporting  # pylint: disable=wrong-import-position
from conprediff_jax.diffusion import samplers  # pylint: disable=wrong-import-position
from conprediff_jax.diffusion.gaussian import GaussianDiffusion  # pylint: disable=wrong-import-position
from conprediff_jax.export import diffusers_export as export  # pylint: disable=wrong-import-position
from conprediff_jax.export import torch_text  # pylint: disable=wrong-import-position
from tests.test_export import _nchw, _random_params  # pylint: disable=wrong-import-position

PROMPTS = ["the digit 3", "a handwritten nine, long enough to be cut", "", "épée 7"]


def _config(variant: str):
  """8x8 grey, mults (1, 2), 2 heads, byte-level prompts of 12 bytes; or RGB, three levels (attention in two
  down blocks at two widths), two res blocks, class labels too, and precomputed 6-wide embeddings."""
  config = smoke.get_config()
  config.data.image_size, config.data.channels = 8, 1
  m, t = config.model, config.text
  m.channels, m.channel_mults, m.num_res_blocks, m.attention_resolutions, m.num_heads, m.num_groups = (
      8, (1, 2), 1, (4,), 2, 4)
  m.text_conditional = True
  t.max_length, t.width, t.depth, t.num_heads = 12, 16, 2, 2
  if variant == "precomputed_class_rgb":
    config.data.channels, m.num_res_blocks, m.class_conditional = 3, 2, True
    m.channel_mults, m.attention_resolutions = (1, 2, 2), (4, 2)
    t.encoder, t.embedding_dim = "precomputed", 6
  return config


def _cond(config, rng, n):
  """A random condition: prompts (some the empty, null prompt) or embeddings with ragged masks, and labels."""
  if config.text.encoder == "bytes":
    cond = {"text_tokens": jnp.asarray(conditioning.encode_text(PROMPTS[:n], config.text.max_length))}
  else:
    lengths = np.array([0, 3, 9, 14][:n])  # 14 > max_length: cut
    cond = {"text_embedding": jnp.asarray(rng.normal(size=(n, 14, config.text.embedding_dim)), jnp.float32),
            "text_mask": jnp.asarray(np.arange(14)[None] < lengths[:, None])}
  if config.model.class_conditional:
    cond["label"] = jnp.asarray(rng.integers(-1, config.data.num_classes, size=n), jnp.int32)  # -1: null class
  return cond


def _model(config, params):
  return nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: models.build_denoiser(config, jax.random.key(0)))), params)


def _torch_context(encoder: torch_text.TextEncoder, config, cond):
  if config.text.encoder == "bytes":
    return encoder.encode(conditioning.decode_text(np.asarray(cond["text_tokens"])))
  return encoder(torch.from_numpy(np.array(cond["text_embedding"])), torch.from_numpy(np.array(cond["text_mask"])))


def _torch_labels(config, cond):
  if not config.model.class_conditional:
    return None
  labels = np.asarray(cond["label"])
  return torch.from_numpy(np.where(labels < 0, config.data.num_classes, labels))  # our null class is the last row


# The second variant runs with the slow command (the guard: the README's test command within its time).
@pytest.mark.parametrize("variant", ["bytes", pytest.param("precomputed_class_rgb", marks=pytest.mark.slow)])
def test_unet2d_condition_model_and_the_torch_encoder_compute_ours(tmp_path, variant):
  config = _config(variant)
  params = _random_params(config, seed=0)
  export.export_text_to_image(config, params, str(tmp_path))
  unet, info = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path), subfolder="unet",
                                                              output_loading_info=True, low_cpu_mem_usage=False)
  assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
  encoder = torch_text.TextEncoder.from_folder(str(tmp_path / "text_encoder"))
  count = lambda module: sum(p.numel() for p in module.parameters())
  assert count(unet) + count(encoder) == train.param_count(params)  # every parameter exported, once
  assert export.diffusers_state_dict_shapes(export.unet2d_condition_config(config)) == {
      k: tuple(v.shape) for k, v in unet.state_dict().items()}
  unet.eval()

  rng = np.random.default_rng(1)
  n = 4
  x = rng.normal(size=(n, 8, 8, config.data.channels)).astype(np.float32)
  t = rng.integers(0, 1000, size=n)
  cond = _cond(config, rng, n)
  model = _model(config, params)
  ours = np.asarray(model(jnp.asarray(x), jnp.asarray(t, jnp.int32), cond)[0])
  our_context, our_mask = model.text_encoder(cond, n)
  with torch.no_grad():
    context, mask = _torch_context(encoder, config, cond)
    np.testing.assert_array_equal(mask.numpy(), np.asarray(our_mask))
    context_error = np.abs(context.numpy() - np.asarray(our_context)).max()
    theirs = unet(_nchw(x), torch.from_numpy(t), encoder_hidden_states=context, encoder_attention_mask=mask,
                  class_labels=_torch_labels(config, cond)).sample.numpy().transpose(0, 2, 3, 1)
  error = np.abs(ours - theirs).max()
  print(f"{variant}: context max abs {context_error:.2e}; UNet max abs {error:.2e}, relative "
        f"{error / np.abs(ours).max():.2e} (outputs up to {np.abs(ours).max():.2f})")
  assert context_error < 1e-5 * max(1.0, np.abs(context.numpy()).max())
  assert error < 1e-5 * np.abs(ours).max()


def test_the_torch_pipeline_draws_our_guided_ddim_samples(tmp_path):
  """Through the family's exporter (what --mode=export runs); with steps == T diffusers' DDIM steps are ours."""
  config = _config("bytes")
  config.diffusion.timesteps, config.diffusion.prediction = 10, "v"
  params = _random_params(config, seed=2)
  family = families.get(config)
  assert exporting.export(family, params, str(tmp_path)) == str(tmp_path)
  assert not (tmp_path / "model_index.json").exists()  # no diffusers pipeline runs our text encoder
  pipe = torch_text.TextToImage(str(tmp_path))

  prompts, scale = PROMPTS[:2], 2.0
  x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
  theirs = pipe(prompts, guidance_scale=scale, num_inference_steps=10, latents=x_T)

  model = _model(config, params)
  cond = {"text_tokens": jnp.asarray(conditioning.encode_text(prompts, config.text.max_length))}
  guided = conditioning.classifier_free(lambda x, t, c: model(x, t, c)[0], cond, scale)
  ours = samplers.sample(guided, GaussianDiffusion.from_config(config), jax.random.key(0), (2, 8, 8, 1),
                         sampler="ddim", steps=10, eta=0.0, x_T=jnp.asarray(x_T.numpy().transpose(0, 2, 3, 1)))
  ours = np.clip(np.asarray(ours) / 2 + 0.5, 0, 1)
  print(f"guided DDIM-10, torch vs ours: max abs {np.abs(theirs - ours).max():.2e}")
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  unguided = pipe(prompts, num_inference_steps=10, latents=x_T)
  assert np.abs(unguided - theirs).max() > 1e-2  # guidance changed the images: the null branch ran


def test_torch_text_imports_nothing_of_ours():
  """The PyTorch side travels with the exported folder: it may import torch, diffusers and the standard library."""
  tree = ast.parse(open(torch_text.__file__, encoding="utf-8").read())
  imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names}
  imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  assert imported <= {"json", "os", "numpy", "torch", "diffusers", "safetensors"}, imported


@pytest.mark.parametrize("linear", [False, True])  # SD-1.x's 1x1-conv projections, SD-2.x's linear ones
def test_a_stable_diffusion_style_unet_imports_and_computes_what_diffusers_does(tmp_path, linear):
  """A UNet2DConditionModel shaped like Stable Diffusion's (cross-attention at every level but the last, two
  resnets per level, one head count), torch-made random weights: `convert import` gives the overrides, ours then
  equals diffusers' forward pass on prompts' embeddings (every position valid, as SD's CLIP tokens are), the null
  prompt reads the learned null_prompt (zeros at import), and exported again the UNet's tensors are bitwise its
  own (linear projections; the 1x1-conv ones are exported linear)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from conprediff_jax import convert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  theirs = diffusers.UNet2DConditionModel(
      sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=2,
      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
      attention_head_dim=2, norm_num_groups=4, use_linear_projection=linear).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.copy_(0.2 * torch.randn_like(p))
  theirs.save_pretrained(tmp_path / "unet")
  config = default.get_config()
  for key in ("data.text_embeddings_file", "sample.prompt_embeddings_file"):  # the user's CLIP embeddings
    np.savez(tmp_path / f"{key}.npz", embedding=np.zeros((1, 5, 12), np.float32))
    config[key.split(".")[0]][key.split(".")[1]] = str(tmp_path / f"{key}.npz")
  command = convert.import_command(str(tmp_path), config)
  assert "--config.text.null_position=False" in command and "--config.text.embedding_dim=12" in command
  overrides = exporting.import_overrides(str(tmp_path))[1]
  for key, value in overrides.items():
    config[key.split(".")[0]][key.split(".")[1]] = value
  config.text.max_length = 5
  params = exporting.import_weights(families.get(config), str(tmp_path))
  ours = _model(config, jax.tree.map(jnp.asarray, params))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
  t = np.array([3, 400, 990])
  embedding = rng.normal(size=(3, 5, 12)).astype(np.float32)
  out, _ = ours(jnp.asarray(x), jnp.asarray(t), {"text_embedding": jnp.asarray(embedding),
                                                 "text_mask": jnp.ones((3, 5), bool)})
  with torch.no_grad():
    expected = theirs(_nchw(x), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(
        embedding)).sample.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4, rtol=1e-4)
  null, _ = ours(jnp.asarray(x), jnp.asarray(t), None)  # the null prompt: zeros, every position valid
  with torch.no_grad():
    zeros = theirs(_nchw(x), torch.from_numpy(t),
                   encoder_hidden_states=torch.zeros(3, 5, 12)).sample.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(null), zeros, atol=1e-4, rtol=1e-4)
  export.export_text_to_image(config, params, str(tmp_path / "export"))  # and torch_text reads the same context
  encoder = torch_text.TextEncoder.from_folder(str(tmp_path / "export" / "text_encoder"))
  context, mask = encoder(torch.from_numpy(embedding), torch.ones(3, 5, dtype=torch.bool))
  np.testing.assert_array_equal(context.detach().numpy(), embedding)
  null_context, null_mask = encoder(torch.zeros(3, 5, 12), torch.zeros(3, 5, dtype=torch.bool))
  assert not null_context.detach().numpy().any() and bool(null_mask.all()) and bool(mask.all())
  if linear:
    unet = export.unet2d_condition_config(config)
    back = export.to_diffusers_state_dict({k: v for k, v in params.items() if k != "text_encoder"}, unet)
    state = theirs.state_dict()
    assert back.keys() == state.keys()
    for name, value in back.items():
      np.testing.assert_array_equal(value, state[name].numpy(), err_msg=name)
