"""Import of a diffusers `UNet2DModel` or `UNet2DConditionModel` (a safetensors folder; no pickle, no network) as our
UNet's parameters.

    python -m conprediff_jax.convert import DIR                       # prints the --config overrides that match DIR
    python -m conprediff_jax.main --config.model.init_from=DIR ...    # fine-tunes it (with the context loss)

DIR is a pipeline folder (with `unet/`) or the UNet's own folder (`config.json` and
`diffusion_pytorch_model.safetensors`). Our UNet mirrors UNet2DModel module for module (export/diffusers_export.py),
so import is the exporter's renaming run backwards, checked tensor by tensor. A UNet2DModel setting our UNet cannot
express (another time embedding, scale-shift norms, attention at several widths, ...) is refused by name.

A UNet2DConditionModel (Stable Diffusion 1.x/2.x's layout: CrossAttnDownBlock2D / DownBlock2D levels, one
Transformer2DModel per resnet, 1x1-conv or linear projections) imports as our text-conditional UNet reading
precomputed embeddings of the width `cross_attention_dim` with `text.null_position=False`: it attends to the
prompt's embeddings alone, as diffusers' does, and its null prompt (classifier-free guidance's) starts at zeros and
is learned in fine-tuning; the prompts' embeddings (CLIP's, for SD) are files the user makes (docs/datasets.md).
"""

import json
import os
from typing import Any

import jax
import numpy as np

from conprediff_jax import families
from conprediff_jax.models.diffusers_layout import WEIGHTS_NAME, read_params
from conprediff_jax.models.unet import NORM_EPS

# UNet2DModel settings our UNet has one value of: (its value here, diffusers' default when config.json omits it).
FIXED = {"center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
         "freq_shift": 0, "flip_sin_to_cos": True, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
         "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu",
         "attn_norm_num_groups": None, "resnet_time_scale_shift": "default", "add_attention": True,
         "class_embed_type": None}
# UNet2DConditionModel: what ours has one value of, beside FIXED (its mid block, and no extra embeddings).
CONDITION_FIXED = {"mid_block_type": "UNetMidBlock2DCrossAttn", "transformer_layers_per_block": 1,
                   "only_cross_attention": False, "dual_cross_attention": False, "addition_embed_type": None,
                   "encoder_hid_dim": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
                   "timestep_post_act": None, "cross_attention_norm": None, "resnet_skip_time_act": False,
                   "attention_type": "default", "num_attention_heads": None}
DIFFUSERS_DEFAULTS = {**FIXED, "norm_eps": 1e-5, "dropout": 0.0}
CLASSES = ("UNet2DModel", "UNet2DConditionModel")
REQUIRED = ("sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
            "layers_per_block", "attention_head_dim", "norm_num_groups")


def model_folder(path: str, subfolder: str, what: str) -> str:
  """The folder holding a diffusers model's config.json and safetensors weights: `path` itself or its
  `subfolder/` (a pipeline's), `what` naming the model in the error."""
  path = os.path.expanduser(path)
  for folder in (os.path.join(path, subfolder), path):
    if os.path.exists(os.path.join(folder, "config.json")):
      weights = os.path.join(folder, WEIGHTS_NAME)
      if not os.path.exists(weights):
        found = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".ckpt", ".safetensors"))]
        raise ValueError(f"{folder} has no {WEIGHTS_NAME} (found {found or 'no weights'}); only safetensors are "
                         "read, never pickles: re-save it with save_pretrained(..., safe_serialization=True)")
      return folder
  raise FileNotFoundError(f"{path!r} holds no diffusers {what} (no config.json there or in {subfolder}/)")


def unet_folder(path: str) -> str:
  return model_folder(path, "unet", "UNet")


def read_unet_config(folder: str) -> dict[str, Any]:
  with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  if config.get("_class_name", "UNet2DModel") not in CLASSES:
    raise ValueError(f"{folder}: a {config['_class_name']}; only {' and '.join(CLASSES)} import as a UNet")
  return config


def config_overrides(unet: dict[str, Any]) -> dict[str, Any]:
  """The `config.<key>` values that make our UNet the network `UNet2DModel(**unet)` (or UNet2DConditionModel's)
  builds; ValueError naming the first setting that has no equivalent here."""
  missing = [k for k in REQUIRED if k not in unet]
  if missing:
    raise ValueError(f"the UNet's config.json lacks {missing}")
  name = unet.get("_class_name", "UNet2DModel")
  text = name == "UNet2DConditionModel"
  fixed = {**FIXED, **(CONDITION_FIXED if text else {})}
  get = lambda k: unet.get(k, {**DIFFUSERS_DEFAULTS, **fixed}[k])
  for key, value in fixed.items():
    if get(key) != value:
      raise ValueError(f"{name} {key}={get(key)!r} has no equivalent here (ours: {value!r})")
  if abs(get("norm_eps") - NORM_EPS) > 1e-12:
    raise ValueError(f"{name} norm_eps={get('norm_eps')} has no equivalent here (ours: {NORM_EPS})")
  if unet["in_channels"] != unet["out_channels"]:
    raise ValueError(f"{name} in_channels={unet['in_channels']} != out_channels={unet['out_channels']}: our "
                     "denoiser predicts as many channels as it reads")
  down = list(unet["down_block_types"])
  attended = "CrossAttnDownBlock2D" if text else "AttnDownBlock2D"
  if any(k not in ("DownBlock2D", attended) for k in down):
    raise ValueError(f"{name} down_block_types {down}: only DownBlock2D and {attended} import")
  mirrored = [k.replace("Down", "Up") for k in reversed(down)]
  if list(unet["up_block_types"]) != mirrored:
    raise ValueError(f"{name} up_block_types {unet['up_block_types']}: ours mirror the down blocks ({mirrored})")
  widths = list(unet["block_out_channels"])
  attention = [k == attended for k in down]
  head_dim = unet["attention_head_dim"]
  attention_widths = {w for w, a in zip(widths, attention) if a} | {widths[-1]}
  if text:  # its attention_head_dim is, by a legacy of diffusers' naming, the number of heads: one count, as ours
    counts = set(head_dim) if isinstance(head_dim, (list, tuple)) else {head_dim}
    if len(counts) != 1 or any(w % next(iter(counts)) for w in attention_widths):
      raise ValueError(f"{name} attention_head_dim={head_dim} (its head counts) at widths "
                       f"{sorted(attention_widths)}: ours has one head count that divides every attention width")
  elif head_dim is None or len(attention_widths) > 1 or widths[-1] % head_dim:
    raise ValueError(f"UNet2DModel attention at widths {sorted(attention_widths)} with attention_head_dim="
                     f"{head_dim}: ours has one head count, so every attention layer must have one width that the "
                     "head size divides")
  if any(w % widths[0] for w in widths):
    raise ValueError(f"UNet2DModel block_out_channels {widths}: ours are multiples of the first")
  size = unet["sample_size"]
  size = size[0] if isinstance(size, (list, tuple)) else size
  classes = unet.get("num_class_embeds")
  overrides = {
      "data.image_size": int(size), "data.channels": int(unet["in_channels"]),
      "model.channels": int(widths[0]), "model.channel_mults": tuple(w // widths[0] for w in widths),
      "model.num_res_blocks": int(unet["layers_per_block"]),
      "model.attention_resolutions": tuple(int(size) // 2**i for i, a in enumerate(attention) if a),
      "model.num_heads": int(next(iter(counts)) if text else widths[-1] // head_dim),
      "model.num_groups": int(unet["norm_num_groups"]),
      "model.dropout": float(get("dropout")), "model.class_conditional": bool(classes),
      "model.text_conditional": text}
  if text:  # the prompt as precomputed embeddings, attended to alone (models/text_encoder.py)
    overrides.update({"text.encoder": "precomputed",
                      "text.embedding_dim": int(unet["cross_attention_dim"]), "text.null_position": False})
  if classes:  # our class embedding's last row is the null class (classifier-free guidance)
    overrides["data.num_classes"] = int(classes) - 1
  return overrides


def mismatches(config, overrides: dict[str, Any]) -> list[str]:
  """`key=value` of each override that `config` does not already have."""
  out = []
  for key, value in overrides.items():
    section, name = key.split(".")
    have = config[section][name]
    if (tuple(have) if isinstance(have, (list, tuple)) else have) != value:
      out.append(f"{key}={value}")
  return out


def load_unet_params(path: str, config) -> dict:
  """Our UNet's parameters (a pure dict of float32 NumPy arrays) from the diffusers UNet at `path`, for `config`,
  whose model settings must be those of config_overrides (a one-line ValueError names the first that is not)."""
  folder = unet_folder(path)
  wrong = mismatches(config, config_overrides(read_unet_config(folder)))
  if wrong:
    raise ValueError(f"config.model.init_from={path!r} is a UNet with {', '.join(wrong)}; pass those "
                     f"(python -m conprediff_jax.convert import {path} prints every setting)")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = dict(load_file(os.path.join(folder, WEIGHTS_NAME)))
  for name, value in tensors.items():  # SD-1.x's 1x1-conv projections are our linear ones
    if name.endswith(("proj_in.weight", "proj_out.weight")) and value.ndim == 4:
      tensors[name] = value[:, :, 0, 0]
  abstract = families.abstract_model(families.get(config))[1]
  encoder = abstract.pop("text_encoder", None)
  params = read_params(folder, abstract, tensors)
  if encoder is not None:  # the null prompt has no diffusers tensor: it starts at zeros (models/text_encoder.py)
    params["text_encoder"] = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), encoder)
  return params
