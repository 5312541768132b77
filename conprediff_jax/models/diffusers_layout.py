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


def _coder_config(found: dict[str, Any], base: dict[str, Any], name: str, fixed: dict[str, Any]) -> dict[str, Any]:
  """`base` with the data shape and network widths of the diffusers VAE coder (`name`: AutoencoderKL, VQModel)
  configured by `found`; the settings ours has one value of (`fixed`, beside the coder's own) are checked first."""
  for key, value in {"act_fn": "silu", "mid_block_add_attention": True, **fixed}.items():
    if found.get(key, value) != value:
      raise ValueError(f"{name} {key}={found[key]!r} has no equivalent here (ours: {value!r})")
  widths = list(found["block_out_channels"])
  levels = len(widths)
  if (list(found["down_block_types"]) != ["DownEncoderBlock2D"] * levels
      or list(found["up_block_types"]) != ["UpDecoderBlock2D"] * levels):
    raise ValueError(f"{name} blocks {found['down_block_types']} / {found['up_block_types']}: only "
                     "DownEncoderBlock2D / UpDecoderBlock2D import")
  if found["in_channels"] != found["out_channels"] or any(w % widths[0] for w in widths):
    raise ValueError(f"{name} in/out channels {found['in_channels']}/{found['out_channels']} and widths {widths}: "
                     "ours reconstruct their input and widen by integer multiples")
  size = found.get("sample_size", 0)
  config = json.loads(json.dumps(base))
  config["data"].update(image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
                        channels=int(found["in_channels"]))
  config["model"].update(channels=widths[0], channel_mults=[w // widths[0] for w in widths],
                         num_res_blocks=int(found["layers_per_block"]), num_groups=int(found["norm_num_groups"]))
  return config


def autoencoder_config(vae: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
  """The config (as a dict, like a run's config.json) of the KL autoencoder that reads the diffusers
  `AutoencoderKL(**vae)` weights, from `base` (configs/digits_kl.py's); its `scaling_factor` is diffusers'. Settings
  ours cannot express are refused by name."""
  config = _coder_config(vae, base, "AutoencoderKL", {
      "use_quant_conv": True, "use_post_quant_conv": True, "shift_factor": None, "latents_mean": None,
      "latents_std": None})
  config["model"]["latent_channels"] = int(vae["latent_channels"])
  config["scaling_factor"] = float(vae.get("scaling_factor", 0.18215))
  return config


def vq_config(vq: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
  """The config (as a dict, like a run's config.json) of the VQ tokenizer (model.layout="diffusers") that reads the
  diffusers `VQModel(**vq)` weights, from `base` (configs/digits_vq.py's). Settings ours cannot express are refused
  by name."""
  config = _coder_config(vq, base, "VQModel", {"norm_type": "group", "lookup_from_codebook": False})
  code_dim = vq.get("vq_embed_dim") or vq["latent_channels"]
  if code_dim != vq["latent_channels"]:
    raise ValueError(f"VQModel vq_embed_dim={code_dim} with latent_channels={vq['latent_channels']}: ours quantise "
                     "the latents as they are")
  config["model"].update(layout="diffusers", code_dim=int(code_dim), codebook_size=int(vq["num_vq_embeddings"]))
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
