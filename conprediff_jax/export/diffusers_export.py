"""Export of the EMA denoiser as a diffusers `DDIMPipeline` folder (a latent model's as an `LDMPipeline`, a
text-conditional one's as a `UNet2DConditionModel` with our text encoder), written without torch.

    python -m conprediff_jax.main --config=... --workdir=<dir> --mode=export   # -> <workdir>/export
    # PyTorch side:  DDIMPipeline.from_pretrained(out)(num_inference_steps=50, use_clipped_model_output=True)

The folder holds `model_index.json`, `unet/config.json` + `unet/diffusion_pytorch_model.safetensors` and
`scheduler/scheduler_config.json`. Our UNet mirrors diffusers' `UNet2DModel` module for module, so the weights
only change names and layouts: conv kernels HWIO -> OIHW, linear kernels (in, out) -> (out, in), GroupNorm
`scale` -> `weight`, `embedding` -> `weight`.

What differs from our own sampler (`conprediff_jax.diffusion.samplers`):
- `DDIMScheduler` with `timestep_spacing="linspace"` evaluates the network at our timesteps (except that for
  `steps=1` it uses t=0 where we use T-1, and that float rounding of exact .5 ties can move a timestep by one),
  but it steps from `t` to `t - T // steps` rather than to the next timestep of the sequence, so the abar_prev
  of its intermediate steps is taken that many timesteps away from ours (T = 1,000): 1 at 50 steps, at most 2
  from 50 to 1,000 steps, 11 at 10 steps, 83 at 4 steps (749 instead of 666). The samplers coincide when
  steps == T, and the last step lands on x0 in both.
- our sampler re-derives eps from the clipped x0; pass `use_clipped_model_output=True` to the pipeline for that.
  `eta` (config.sample.eta) is a pipeline call argument too; config.sample.sampler="ddpm" is not exported.
- `DDIMPipeline` takes no class labels: a class-conditional UNet is exported (call it with `class_labels`, whose
  last index, `num_classes`, is the null class) but the pipeline alone cannot drive it.

A text-conditional UNet follows `UNet2DConditionModel` (Transformer2DModel attentions with linear projections), but
no diffusers pipeline runs our text encoder: `export_text_to_image` writes the UNet, the scheduler and the encoder
(a plain state dict), and `export/torch_text.py`, a file of torch and diffusers alone, encodes prompts and runs the
guided DDIM loop.

This module imports neither torch nor the training-only `conprediff_jax.context`.
"""

from collections.abc import Mapping
import json
import os
from typing import Any

import jax
import numpy as np

from conprediff_jax import conditioning, families
from conprediff_jax.diffusion import gaussian
from conprediff_jax.models import text_encoder, vq
from conprediff_jax.models.attention import LN_EPS
from conprediff_jax.models.diffusers_layout import WEIGHTS_NAME, torch_layout
from conprediff_jax.models.unet import NORM_EPS

# The diffusers release whose UNet2DModel / DDIMScheduler layout this exporter was checked against (tests).
DIFFUSERS_VERSION = "0.42.1"
TEXT_ENCODER_WEIGHTS = "model.safetensors"
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


# ------------------------------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------------------------------
def _unet_settings(config) -> tuple[dict[str, Any], list[bool]]:
  """The settings UNet2DModel and UNet2DConditionModel share, and which levels attend."""
  m, d = config.model, config.data
  if m.name != "unet":
    raise ValueError(f"diffusers export supports config.model.name='unet', got {m.name!r}")
  mults = tuple(m.channel_mults)
  if mults[0] != 1:
    # diffusers embeds t with block_out_channels[0] sinusoids; ours uses model.channels.
    raise ValueError(f"diffusers export needs config.model.channel_mults[0] == 1, got {mults}")
  widths = [m.channels * k for k in mults]
  attention = [d.image_size // 2**level in tuple(m.attention_resolutions) for level in range(len(widths))]
  return {
      "sample_size": d.image_size,
      "in_channels": d.channels,
      "out_channels": d.channels,
      "center_input_sample": False,
      "time_embedding_type": "positional",
      "time_embedding_dim": None,  # 4 * block_out_channels[0], as ours
      "freq_shift": 0,
      "flip_sin_to_cos": True,
      "block_out_channels": widths,
      "layers_per_block": m.num_res_blocks,
      "mid_block_scale_factor": 1,
      "downsample_padding": 1,
      "dropout": float(m.dropout),
      "act_fn": "silu",
      "norm_num_groups": m.num_groups,
      "norm_eps": NORM_EPS,
      "resnet_time_scale_shift": "default",
      "class_embed_type": None,
      # Our embedding has one extra, last row: the null class.
      "num_class_embeds": d.num_classes + 1 if m.class_conditional else None,
  }, attention


def unet2d_config(config) -> dict[str, Any]:
  """`UNet2DModel(**unet2d_config(config))` builds the network our `config.model` describes."""
  if config.model.get("text_conditional", False):
    raise ValueError("a text-conditional UNet is a UNet2DConditionModel (unet2d_condition_config), not a UNet2DModel")
  settings, attention = _unet_settings(config)
  widths, heads = settings["block_out_channels"], config.model.num_heads
  # diffusers fixes the head *width* for the whole UNet; we fix the head *count*: equal only at one width.
  attention_widths = {w for w, a in zip(widths, attention) if a} | {widths[-1]}  # the mid block always attends
  if len(attention_widths) > 1:
    raise ValueError(f"diffusers export needs every attention layer (mid block included) at one width, got "
                     f"{sorted(attention_widths)}: change config.model.attention_resolutions or channel_mults")
  width = attention_widths.pop()
  if width % heads:
    raise ValueError(f"attention width {width} not divisible by config.model.num_heads {heads}")
  return {
      **settings,
      "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
      "mid_block_type": "UNetMidBlock2D",
      "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
      "downsample_type": "conv",
      "upsample_type": "conv",
      "attention_head_dim": width // heads,
      "attn_norm_num_groups": None,
      "add_attention": True,
      "num_train_timesteps": None,
  }


def unet2d_condition_config(config) -> dict[str, Any]:
  """`UNet2DConditionModel(**unet2d_condition_config(config))` builds the text-conditional UNet: every attention
  a Transformer2DModel with linear projections whose cross-attention reads the text encoder's context."""
  settings, attention = _unet_settings(config)
  t = config.text
  return {
      **settings,
      "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
      "mid_block_type": "UNetMidBlock2DCrossAttn",
      "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
      "cross_attention_dim": text_encoder.context_dim(t.encoder, t.width, t.embedding_dim),
      # UNet2DConditionModel's attention_head_dim is, by a legacy of its naming, the number of heads: as ours.
      "attention_head_dim": config.model.num_heads,
      "use_linear_projection": True,
      "transformer_layers_per_block": 1,
      "only_cross_attention": False,
      "upcast_attention": False,
      "dual_cross_attention": False,
      "conv_in_kernel": 3,
      "conv_out_kernel": 3,
  }


def text_encoder_config(config) -> dict[str, Any]:
  """What export/torch_text.py needs to rebuild our text encoder (models/text_encoder.py) in PyTorch."""
  t = config.text
  return {"encoder": t.encoder, "max_length": t.max_length, "width": t.width, "depth": t.depth,
          "num_heads": t.num_heads, "embedding_dim": t.embedding_dim, "layer_norm_eps": LN_EPS,
          "null_position": bool(t.get("null_position", True)),
          "pad": conditioning.PAD, "bos": conditioning.BOS, "vocab": conditioning.TEXT_VOCAB}


def scheduler_config(config) -> dict[str, Any]:
  """`DDIMScheduler(**scheduler_config(config))` has our alphas_cumprod, prediction type and x0 clipping."""
  # Imported here: only this function needs the schedule definitions.
  diff = config.diffusion
  if diff.get("process", "ddpm") == "flow":
    raise ValueError("--mode=export: a flow-matching model (config.diffusion.process='flow') has no diffusers "
                     "scheduler export yet; sample and evaluate it here")
  if diff.prediction not in PREDICTION_TYPES:
    raise ValueError(f"config.diffusion.prediction must be one of {sorted(PREDICTION_TYPES)}, got {diff.prediction!r}")
  num_timesteps = int(diff.timesteps)
  if diff.schedule == "cosine":
    # Same alpha_bar (s = 0.008) and max_beta (0.999); beta_start/end are unused by this schedule.
    schedule = {"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02}
  elif diff.schedule == "linear":
    betas = gaussian.linear_betas(num_timesteps)  # endpoints rescaled by 1000 / T
    schedule = {"beta_schedule": "linear", "beta_start": float(betas[0]), "beta_end": float(betas[-1])}
  else:
    raise ValueError(f"diffusers export supports schedules 'cosine' and 'linear', got {diff.schedule!r}")
  return {
      "num_train_timesteps": num_timesteps,
      **schedule,
      "trained_betas": None,
      "clip_sample": True,  # our sampler clips x0 to [-1, 1]
      "clip_sample_range": 1.0,
      "set_alpha_to_one": True,  # the last step lands on x0, as ours (abar_prev = 1)
      "steps_offset": 0,
      "prediction_type": PREDICTION_TYPES[diff.prediction],
      "thresholding": False,  # so the next two are unused; written so the file lists every option
      "dynamic_thresholding_ratio": 0.995,
      "sample_max_value": 1.0,
      "timestep_spacing": "linspace",  # the model sees our timesteps; see the module docstring for the step size
      "rescale_betas_zero_snr": False,
  }


# ------------------------------------------------------------------------------------------------------------------
# Weights.
# ------------------------------------------------------------------------------------------------------------------
def diffusers_state_dict_shapes(unet_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Every tensor name and shape of `UNet2DModel(**unet_config).state_dict()` (or UNet2DConditionModel's, for a
  config with `cross_attention_dim`), derived without torch.

  An independent reading of diffusers' layout, so that a renaming slip in our UNet or in the exporter fails here
  rather than in a user's `load_state_dict`.
  """
  c = unet_config
  widths = list(c["block_out_channels"])
  temb, layers, last = 4 * widths[0], c["layers_per_block"], len(widths) - 1
  shapes: dict[str, tuple[int, ...]] = {}

  def affine(name, cin, cout, kernel=None):
    shapes[f"{name}.weight"] = (cout, cin) if kernel is None else (cout, cin, kernel, kernel)
    shapes[f"{name}.bias"] = (cout,)

  def norm(name, channels):
    shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (channels,)

  def resnet(name, cin, cout):
    norm(f"{name}.norm1", cin)
    affine(f"{name}.conv1", cin, cout, 3)
    affine(f"{name}.time_emb_proj", temb, cout)
    norm(f"{name}.norm2", cout)
    affine(f"{name}.conv2", cout, cout, 3)
    if cin != cout:
      affine(f"{name}.conv_shortcut", cin, cout, 1)

  cross = c.get("cross_attention_dim")

  def attention(name, channels):
    if cross is None:  # AttnDownBlock2D's Attention
      norm(f"{name}.group_norm", channels)
      for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        affine(f"{name}.{proj}", channels, channels)
      return
    # Transformer2DModel (linear projections): self-attention, cross-attention, GEGLU feed-forward.
    block = f"{name}.transformer_blocks.0"
    norm(f"{name}.norm", channels)
    affine(f"{name}.proj_in", channels, channels)
    for attn, kv_dim in (("attn1", channels), ("attn2", cross)):
      for proj, cin in (("to_q", channels), ("to_k", kv_dim), ("to_v", kv_dim)):
        shapes[f"{block}.{attn}.{proj}.weight"] = (channels, cin)
      affine(f"{block}.{attn}.to_out.0", channels, channels)
    for i in (1, 2, 3):
      norm(f"{block}.norm{i}", channels)
    affine(f"{block}.ff.net.0.proj", channels, 8 * channels)
    affine(f"{block}.ff.net.2", 4 * channels, channels)
    affine(f"{name}.proj_out", channels, channels)

  affine("conv_in", c["in_channels"], widths[0], 3)
  affine("time_embedding.linear_1", widths[0], temb)
  affine("time_embedding.linear_2", temb, temb)
  if c["num_class_embeds"]:
    shapes["class_embedding.weight"] = (c["num_class_embeds"], temb)
  cout = widths[0]
  for i, kind in enumerate(c["down_block_types"]):
    cin, cout = cout, widths[i]
    for j in range(layers):
      resnet(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
      if "Attn" in kind:
        attention(f"down_blocks.{i}.attentions.{j}", cout)
    if i < last:
      affine(f"down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
  for j in range(2):
    resnet(f"mid_block.resnets.{j}", widths[-1], widths[-1])
  attention("mid_block.attentions.0", widths[-1])
  reversed_widths = widths[::-1]
  previous = reversed_widths[0]
  for i, kind in enumerate(c["up_block_types"]):
    cout, skip_in = reversed_widths[i], reversed_widths[min(i + 1, last)]
    for j in range(layers + 1):
      skip = skip_in if j == layers else cout
      resnet(f"up_blocks.{i}.resnets.{j}", (previous if j == 0 else cout) + skip, cout)
      if "Attn" in kind:
        attention(f"up_blocks.{i}.attentions.{j}", cout)
    if i < last:
      affine(f"up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    previous = cout
  norm("conv_norm_out", widths[0])
  affine("conv_out", widths[0], c["out_channels"], 3)
  return shapes


def _to_torch_layout(leaf_name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  suffix, axes = torch_layout(leaf_name, value.ndim)
  return suffix, value if axes is None else value.transpose(axes)


def to_diffusers_state_dict(params: Mapping, unet_config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Our denoiser's pure-dict parameters -> diffusers `UNet2DModel` state dict (float32, C-contiguous NumPy).

  With `unet_config`, the names and shapes must be exactly those of `diffusers_state_dict_shapes(unet_config)`.
  """
  out: dict[str, np.ndarray] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [jax.tree_util.keystr((k,), simple=True) for k in path]
    # np.array copies: np.asarray of a jax.Array is read-only, and torch wants writable, contiguous buffers.
    suffix, value = _to_torch_layout(keys[-1], np.array(jax.device_get(leaf), dtype=np.float32))
    name = ".".join(keys[:-1] + [suffix])
    if name in out:
      raise ValueError(f"two parameters map to the diffusers name {name!r}")
    out[name] = np.ascontiguousarray(value)
  if unet_config is not None:
    expected = diffusers_state_dict_shapes(unet_config)
    missing, extra = sorted(expected.keys() - out.keys()), sorted(out.keys() - expected.keys())
    wrong = sorted(f"{k}: {out[k].shape} != {expected[k]}" for k in expected.keys() & out.keys()
                   if tuple(out[k].shape) != expected[k])
    if missing or extra or wrong:
      model = "UNet2DConditionModel" if "cross_attention_dim" in unet_config else "UNet2DModel"
      raise ValueError(f"parameters do not fit diffusers' {model} layout:\n  missing: {missing}\n"
                       f"  unexpected: {extra}\n  wrong shapes: {wrong}")
  return out


# ------------------------------------------------------------------------------------------------------------------
# The pipeline folder.
# ------------------------------------------------------------------------------------------------------------------
def write_json(path: str, content: Mapping[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(content, f, indent=2, sort_keys=True)
    f.write("\n")


def write_model(folder: str, class_name: str, model_config: Mapping[str, Any], state_dict: Mapping, *,
                 weights_name: str = WEIGHTS_NAME, version: bool = True) -> None:
  """A diffusers model folder: config.json and the weights as safetensors (a plain PyTorch state dict)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top  # export-only dependency
  os.makedirs(folder, exist_ok=True)
  save_file(dict(state_dict), os.path.join(folder, weights_name), metadata={"format": "pt"})
  header = version_stamp(class_name) if version else {"_class_name": class_name}
  write_json(os.path.join(folder, "config.json"), {**header, **model_config})


def version_stamp(class_name: str) -> dict[str, str]:
  return {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION}


def export_pipeline(config, ema_params: Mapping, out_dir: str, *, pipeline: str = "DDIMPipeline",
                    clip_sample: bool = True, components: Mapping[str, str] | None = None) -> str:
  """Writes a `DDIMPipeline.from_pretrained`-loadable folder from the denoiser's (EMA) parameters; returns it.
  (`pipeline`, `clip_sample` and further `components` {folder: class} are the latent pipeline's.)"""
  unet = unet2d_config(config)
  write_model(os.path.join(out_dir, "unet"), "UNet2DModel", unet, to_diffusers_state_dict(ema_params, unet))
  write_scheduler(config, out_dir, clip_sample)
  parts = {"unet": "UNet2DModel", "scheduler": "DDIMScheduler", **(components or {})}
  write_json(os.path.join(out_dir, "model_index.json"),
              {**version_stamp(pipeline), **{name: ["diffusers", cls] for name, cls in parts.items()}})
  return out_dir


def write_scheduler(config, out_dir: str, clip_sample: bool) -> None:
  write_json(os.path.join(out_dir, "scheduler", "scheduler_config.json"),
              {**version_stamp("DDIMScheduler"), **scheduler_config(config), "clip_sample": clip_sample})


def export_text_to_image(config, ema_params: Mapping, out_dir: str, autoencoder: tuple | None = None) -> str:
  """A text-conditional model as `unet/` (diffusers' UNet2DConditionModel), `scheduler/` (DDIMScheduler),
  `text_encoder/` (ours, as a plain PyTorch state dict and the config.json export/torch_text.py reads) and, for a
  latent model, `vae/` (AutoencoderKL; `autoencoder` = (its config, weights, scaling factor)). No diffusers
  pipeline runs our text encoder, so there is no model_index.json: export/torch_text.py is the pipeline."""
  unet = unet2d_condition_config(config)  # first: what diffusers cannot express is refused before anything is written
  params = dict(ema_params)
  encoder = params.pop("text_encoder")
  write_model(os.path.join(out_dir, "unet"), "UNet2DConditionModel", unet, to_diffusers_state_dict(params, unet))
  write_scheduler(config, out_dir, clip_sample=autoencoder is None)  # latents are not clipped
  write_model(os.path.join(out_dir, "text_encoder"), "ConPreDiffTextEncoder", text_encoder_config(config),
               to_diffusers_state_dict(encoder), weights_name=TEXT_ENCODER_WEIGHTS, version=False)
  if autoencoder is not None:
    export_autoencoder(autoencoder[0], autoencoder[1], os.path.join(out_dir, "vae"), autoencoder[2])
  return out_dir


def export_latent_pipeline(denoiser_config, ema_params: Mapping, autoencoder_config, autoencoder_weights: Mapping,
                           scaling_factor: float, out_dir: str) -> str:
  """A latent model as an `LDMPipeline` folder (its `vqvae` slot holds our AutoencoderKL, which the pipeline
  divides latents by `scaling_factor` and decodes, as ours does): loadable with no code of ours. The scheduler does
  not clip: latents are unbounded."""
  export_pipeline(denoiser_config, ema_params, out_dir, pipeline="LDMPipeline", clip_sample=False,
                  components={"vqvae": "AutoencoderKL"})
  export_autoencoder(autoencoder_config, autoencoder_weights, os.path.join(out_dir, "vqvae"), scaling_factor)
  return out_dir


def _coder_config(config) -> dict[str, Any]:
  """The settings of diffusers' VAE encoder and decoder that AutoencoderKL and VQModel share, from our config."""
  m, d = config.model, config.data
  levels = len(m.channel_mults)
  return {
      "in_channels": d.channels, "out_channels": d.channels,
      "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
      "block_out_channels": [m.channels * k for k in m.channel_mults], "layers_per_block": m.num_res_blocks,
      "act_fn": "silu", "norm_num_groups": m.num_groups, "sample_size": d.image_size, "mid_block_add_attention": True,
  }


def autoencoder_kl_config(config, scaling_factor: float) -> dict[str, Any]:
  """`AutoencoderKL(**autoencoder_kl_config(config, s))` builds the network configs/digits_kl.py describes."""
  return {
      **_coder_config(config), "latent_channels": config.model.latent_channels,
      "scaling_factor": float(scaling_factor), "shift_factor": None,
      "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
      "use_post_quant_conv": True,
  }


def export_autoencoder(config, weights: Mapping, out_dir: str, scaling_factor: float | None = None) -> str:
  """Writes an `AutoencoderKL.from_pretrained`-loadable folder; the scaling factor measured on the training data
  unless given."""
  if scaling_factor is None:
    scaling_factor = families.get(config).scaling_factor(weights)
  write_model(out_dir, "AutoencoderKL", autoencoder_kl_config(config, scaling_factor),
               to_diffusers_state_dict(weights))
  return out_dir


def vqmodel_config(config) -> dict[str, Any]:
  """`VQModel(**vqmodel_config(config))` builds the VQ tokenizer of a config with model.layout="diffusers"."""
  m = config.model
  if m.get("layout", "vqvae") != "diffusers":
    raise ValueError(f"--mode=export: a VQ tokenizer exports as a diffusers VQModel with config.model.layout="
                     f"'diffusers' (this one's is {m.get('layout', 'vqvae')!r}: models/vq.py's own layout, which "
                     "diffusers has no class for); train it with that layout to export it")
  return {
      **_coder_config(config), "latent_channels": m.code_dim, "num_vq_embeddings": m.codebook_size,
      "vq_embed_dim": m.code_dim, "scaling_factor": 1.0, "norm_type": "group", "lookup_from_codebook": False,
      "force_upcast": False,
  }


def export_vqmodel(config, weights: Mapping, out_dir: str) -> str:
  """Writes a `VQModel.from_pretrained`-loadable folder: the network's parameters and the codebook as
  `quantize.embedding.weight`; the codebook's EMA statistics stay behind (training state)."""
  model_config = vqmodel_config(config)
  params = {k: v for k, v in weights.items() if k not in vq.BUFFERS}
  state = to_diffusers_state_dict(params)
  state["quantize.embedding.weight"] = np.array(jax.device_get(weights["codebook"]), np.float32)
  write_model(out_dir, "VQModel", model_config, state)
  return out_dir
