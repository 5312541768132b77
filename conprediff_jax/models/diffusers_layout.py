"""Our networks' weights in diffusers' layout, and diffusers' AutoencoderKL config as ours: what reading a diffusers
folder needs, with neither torch nor the exporter (export/ writes folders; this reads them, for a family's first
stage and for model.init_from).

Our UNet, KL autoencoder and text encoder mirror diffusers' modules name for name, so a parameter's diffusers name
is its path with the leaf renamed (`torch_layout`) and its array transposed to PyTorch's layout.
"""

import json
import os
from typing import Any

import jax
import numpy as np

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def torch_layout(leaf_name: str, ndim: int) -> tuple[str, tuple[int, ...] | None]:
  """(PyTorch's name for our parameter leaf, the axes that transpose ours into its layout, or None)."""
  if leaf_name == "kernel" and ndim == 4:
    return "weight", (3, 2, 0, 1)  # HWIO -> OIHW
  if leaf_name == "kernel" and ndim == 2:
    return "weight", (1, 0)  # (in, out) -> (out, in)
  if leaf_name in ("scale", "embedding"):
    return "weight", None
  if leaf_name == "bias":
    return "bias", None
  if leaf_name in ("position_embedding", "null_embedding", "null_prompt"):  # the text encoder's: kept as named
    return leaf_name, None
  raise ValueError(f"no diffusers equivalent for a {ndim}-d parameter named {leaf_name!r}")


def autoencoder_config(vae: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
  """The config (as a dict, like a run's config.json) of the KL autoencoder that reads the diffusers
  `AutoencoderKL(**vae)` weights, from `base` (configs/digits_kl.py's); its `scaling_factor` is diffusers'. Settings
  ours cannot express are refused by name."""
  fixed = {"act_fn": "silu", "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
           "shift_factor": None, "latents_mean": None, "latents_std": None}
  for key, value in fixed.items():
    if vae.get(key, value) != value:
      raise ValueError(f"AutoencoderKL {key}={vae[key]!r} has no equivalent here (ours: {value!r})")
  widths = list(vae["block_out_channels"])
  levels = len(widths)
  if (list(vae["down_block_types"]) != ["DownEncoderBlock2D"] * levels
      or list(vae["up_block_types"]) != ["UpDecoderBlock2D"] * levels):
    raise ValueError(f"AutoencoderKL blocks {vae['down_block_types']} / {vae['up_block_types']}: only "
                     "DownEncoderBlock2D / UpDecoderBlock2D import")
  if vae["in_channels"] != vae["out_channels"] or any(w % widths[0] for w in widths):
    raise ValueError(f"AutoencoderKL in/out channels {vae['in_channels']}/{vae['out_channels']} and widths {widths}: "
                     "ours reconstruct their input and widen by integer multiples")
  size = vae.get("sample_size", 0)
  config = json.loads(json.dumps(base))
  config["data"].update(image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
                        channels=int(vae["in_channels"]))
  config["model"].update(channels=widths[0], channel_mults=[w // widths[0] for w in widths],
                         num_res_blocks=int(vae["layers_per_block"]), latent_channels=int(vae["latent_channels"]),
                         num_groups=int(vae["norm_num_groups"]))
  config["scaling_factor"] = float(vae.get("scaling_factor", 0.18215))
  return config


def vq_config(vq: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
  """The config (as a dict, like a run's config.json) of the VQ tokenizer (model.layout="diffusers") that reads the
  diffusers `VQModel(**vq)` weights, from `base` (configs/digits_vq.py's). Settings ours cannot express are refused
  by name."""
  fixed = {"act_fn": "silu", "norm_type": "group", "mid_block_add_attention": True, "lookup_from_codebook": False}
  for key, value in fixed.items():
    if vq.get(key, value) != value:
      raise ValueError(f"VQModel {key}={vq[key]!r} has no equivalent here (ours: {value!r})")
  widths = list(vq["block_out_channels"])
  levels = len(widths)
  if (list(vq["down_block_types"]) != ["DownEncoderBlock2D"] * levels
      or list(vq["up_block_types"]) != ["UpDecoderBlock2D"] * levels):
    raise ValueError(f"VQModel blocks {vq['down_block_types']} / {vq['up_block_types']}: only DownEncoderBlock2D / "
                     "UpDecoderBlock2D import")
  code_dim = vq.get("vq_embed_dim") or vq["latent_channels"]
  if code_dim != vq["latent_channels"] or vq["in_channels"] != vq["out_channels"] or any(w % widths[0] for w in widths):
    raise ValueError(f"VQModel latent_channels={vq['latent_channels']}, vq_embed_dim={vq.get('vq_embed_dim')}, in/out "
                     f"channels {vq['in_channels']}/{vq['out_channels']}, widths {widths}: ours quantise the "
                     "latents as they are, reconstruct their input and widen by integer multiples")
  size = vq.get("sample_size", 0)
  config = json.loads(json.dumps(base))
  config["data"].update(image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
                        channels=int(vq["in_channels"]))
  config["model"].update(channels=widths[0], channel_mults=[w // widths[0] for w in widths], layout="diffusers",
                         num_res_blocks=int(vq["layers_per_block"]), code_dim=int(code_dim),
                         codebook_size=int(vq["num_vq_embeddings"]), num_groups=int(vq["norm_num_groups"]))
  config["diffusers"] = "VQModel"  # not a run of ours: first_stage.from_diffusers
  return config


def read_params(folder: str, abstract: dict, tensors: dict[str, np.ndarray] | None = None) -> dict:
  """The parameters of our model with Param shapes `abstract` from the diffusers weights in `folder` (or `tensors`
  read from there and renamed): the exporter's names and layouts (torch_layout) run backwards; every tensor must
  be used once."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if tensors is None:
    tensors = load_file(os.path.join(folder, WEIGHTS_NAME))
  used = set()

  def take(path_keys, leaf):
    keys = [jax.tree_util.keystr((k,), simple=True) for k in path_keys]
    suffix, axes = torch_layout(keys[-1], len(leaf.shape))
    name = ".".join(keys[:-1] + [suffix])
    if name not in tensors:
      raise ValueError(f"{folder}: tensor {name} missing from {WEIGHTS_NAME}")
    value = np.asarray(tensors[name], np.float32)
    if axes is not None and value.ndim == len(axes):
      value = value.transpose(np.argsort(axes))  # back from PyTorch's layout
    if value.shape != tuple(leaf.shape):
      raise ValueError(f"{folder}: tensor {name} has shape {tensors[name].shape}, our {'.'.join(keys)} needs "
                       f"{tuple(leaf.shape)} in diffusers' layout")
    used.add(name)
    return np.ascontiguousarray(value)

  params = jax.tree_util.tree_map_with_path(take, abstract)
  extra = sorted(set(tensors) - used)
  if extra:
    raise ValueError(f"{folder}: {len(extra)} tensors have no place in our model, e.g. {extra[:3]}")
  return params
