"""A DiT both ways with diffusers' `DiTTransformer2DModel` (a safetensors folder; no torch needed here).

    python -m conprediff_jax.main --config=configs/digits_dit.py --workdir=<dir> --mode=export   # -> <dir>/export
    python -m conprediff_jax.convert import DIR          # the --config overrides that match a diffusers DiT
    python -m conprediff_jax.main --config=configs/dit_xl2.py --config.model.init_from=DIR ...   # fine-tune it

The export folder holds `transformer/` (DiTTransformer2DModel) and `scheduler/` (DDIMScheduler), and, for a
class-conditional latent DiT, `vae/` (our AutoencoderKL) and a `model_index.json` that makes it a `DiTPipeline`,
loadable with no code of ours (its guidance passes class 1000 as the null class, so guidance_scale > 1 needs a
1,000-class model; below that any class count works). A pixel-space or unconditional DiT has no diffusers
pipeline: load the transformer and drive DDIMScheduler with it (docs/pytorch.md).

Our DiT (models/dit.py) names its modules as diffusers does, with one difference: diffusers keeps a copy of the
timestep and class embedders in every block's norm1 (`transformer_blocks.{i}.norm1.emb`), ours holds one (`emb`).
The export writes the copies; the import reads block 0's and refuses a folder whose copies differ. An
unconditional DiT is written with one class whose embedding is zero (diffusers' DiT always adds a class); a
diffusers DiT with one class imports as unconditional, that class's embedding folded into the timestep
embedder's last bias (the same sum). A DiT with a learned variance (out_channels = 2 x in_channels, as the
released DiT-XL/2) imports its mean half. Diffusers' LayerNorms in the MLP use its norm_eps (1e-5 by default,
ours 1e-6 as the DiT paper's): exports write 1e-6, imports accept either.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from conprediff_jax import families
from conprediff_jax.export import diffusers_export, diffusers_import
from conprediff_jax.models import dit
from conprediff_jax.models.diffusers_layout import read_params

CLASS_NAME = "DiTTransformer2DModel"
EMBEDDERS = "emb."  # our shared embedders' prefix; diffusers': transformer_blocks.{i}.norm1.emb.
CLASS_TABLE = ("class_embedder.weight", "class_embedder.embedding_table.weight")  # (our name, diffusers')
# DiTTransformer2DModel settings ours has one value of.
FIXED = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
         "norm_elementwise_affine": False}


def transformer_config(config) -> dict[str, Any]:
  """`DiTTransformer2DModel(**transformer_config(config))` builds the DiT our config describes."""
  m, d = config.model, config.data
  if m.get("text_conditional", False) or m.get("mask_conditional", False):
    raise ValueError("--mode=export: diffusers' DiTTransformer2DModel has no cross-attention and no mask input; a "
                     "text- or mask-conditioned DiT is sampled here (export an unconditional or class-conditional "
                     "one)")
  if m.mlp_ratio != 4:
    raise ValueError(f"--mode=export: diffusers' DiT has an MLP 4x its width, config.model.mlp_ratio={m.mlp_ratio}")
  return {**FIXED, "num_attention_heads": m.num_heads, "attention_head_dim": m.width // m.num_heads,
          "in_channels": d.channels, "out_channels": d.channels, "num_layers": m.depth, "dropout": float(m.dropout),
          "sample_size": d.image_size, "patch_size": m.patch_size, "upcast_attention": False, "norm_eps": dit.NORM_EPS,
          "num_embeds_ada_norm": d.num_classes if m.class_conditional else 1}


def to_state_dict(config, params: Mapping) -> dict[str, np.ndarray]:
  """Our DiT's parameters -> DiTTransformer2DModel's state dict (the embedders copied into every block)."""
  ours = diffusers_export.to_diffusers_state_dict(params)
  shared = {k[len(EMBEDDERS):]: v for k, v in ours.items() if k.startswith(EMBEDDERS)}
  if CLASS_TABLE[0] not in shared:  # unconditional: one class, embedded as zero, and the null row
    shared[CLASS_TABLE[0]] = np.zeros((2, config.model.width), np.float32)
  shared[CLASS_TABLE[1]] = shared.pop(CLASS_TABLE[0])
  out = {k: v for k, v in ours.items() if not k.startswith(EMBEDDERS)}
  for i in range(config.model.depth):
    out.update({f"transformer_blocks.{i}.norm1.emb.{k}": v for k, v in shared.items()})
  return out


def export(family, weights: Mapping, out_dir: str) -> str:
  """The export folder (see the module docstring) for a Gaussian family whose backbone is a DiT."""
  config = family.denoiser_config
  transformer = transformer_config(config)  # first: what diffusers cannot express is refused before writing
  latent = family.latent
  diffusers_export.write_model(os.path.join(out_dir, "transformer"), CLASS_NAME, transformer,
                                to_state_dict(config, weights))
  diffusers_export.write_scheduler(config, out_dir, clip_sample=latent is None)
  if latent is not None:
    diffusers_export.export_autoencoder(latent.autoencoder_config, latent.stage.weights, os.path.join(out_dir, "vae"),
                                        latent.scaling_factor)
    if config.model.class_conditional:
      parts = {"transformer": CLASS_NAME, "vae": "AutoencoderKL", "scheduler": "DDIMScheduler"}
      diffusers_export.write_json(os.path.join(out_dir, "model_index.json"), {
          **diffusers_export.version_stamp("DiTPipeline"), **{k: ["diffusers", v] for k, v in parts.items()}})
  return out_dir


# ------------------------------------------------------------------------------------------------------------------
# Import.
# ------------------------------------------------------------------------------------------------------------------
def folder(path: str) -> str:
  return diffusers_import.model_folder(path, "transformer", "DiT")


def read_config(path: str) -> dict[str, Any]:
  with open(os.path.join(folder(path), "config.json"), encoding="utf-8") as f:
    found = json.load(f)
  if found.get("_class_name") != CLASS_NAME:
    raise ValueError(f"{path!r} holds a {found.get('_class_name')!r}, not a {CLASS_NAME}")
  return found


def config_overrides(found: Mapping[str, Any]) -> dict[str, Any]:
  """The `config.<key>` values that make our DiT the network `DiTTransformer2DModel(**found)` builds; ValueError
  naming the first setting ours cannot express."""
  for key, value in FIXED.items():
    if found.get(key, value) != value:
      raise ValueError(f"{CLASS_NAME} {key}={found[key]!r} has no equivalent here (ours: {value!r})")
  channels, out = found["in_channels"], found.get("out_channels") or found["in_channels"]
  if out not in (channels, 2 * channels):
    raise ValueError(f"{CLASS_NAME} out_channels={out} with in_channels={channels}: ours predicts the input's "
                     "channels (or reads the mean half of a learned-variance output)")
  classes = int(found.get("num_embeds_ada_norm") or 0)
  heads = int(found["num_attention_heads"])
  overrides = {"model.name": "dit", "data.image_size": int(found["sample_size"]), "data.channels": int(channels),
               "model.patch_size": int(found["patch_size"]), "model.width": heads * int(found["attention_head_dim"]),
               "model.depth": int(found["num_layers"]), "model.num_heads": heads, "model.mlp_ratio": 4,
               "model.dropout": float(found.get("dropout", 0.0)), "model.class_conditional": classes > 1}
  if classes > 1:
    overrides["data.num_classes"] = classes
  return overrides


def load_params(path: str, family) -> dict:
  """Our DiT's parameters (float32 NumPy) from the diffusers DiT at `path`, for a Gaussian `family` whose
  denoiser's settings must be config_overrides' (a one-line ValueError names those that differ)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  found = read_config(path)
  overrides = config_overrides(found)
  wrong = diffusers_import.mismatches(family.denoiser_config, overrides)
  if wrong:
    raise ValueError(f"config.model.init_from={path!r} is a DiT with {', '.join(wrong)}; pass those "
                     f"(python -m conprediff_jax.convert import {path} prints every setting)")
  where = folder(path)
  tensors = dict(load_file(os.path.join(where, diffusers_export.WEIGHTS_NAME)))
  copies = [f"transformer_blocks.{i}.norm1.emb." for i in range(int(found["num_layers"]))]
  shared = {k[len(copies[0]):]: tensors.pop(k) for k in list(tensors) if k.startswith(copies[0])}
  for prefix in copies[1:]:
    for name, value in shared.items():
      if not np.array_equal(tensors.pop(prefix + name, None), value):
        raise ValueError(f"{path!r}: block {prefix.split('.')[1]}'s {name} differs from block 0's; our DiT shares "
                         "one timestep and class embedder across blocks, as the DiT paper's")
  table = shared.pop(CLASS_TABLE[1])
  if overrides["model.class_conditional"]:
    shared[CLASS_TABLE[0]] = table
  else:  # one class: its embedding is a constant added to the timestep's, folded into the last bias
    shared["timestep_embedder.linear_2.bias"] = shared["timestep_embedder.linear_2.bias"] + table[0]
  tensors.update({EMBEDDERS + k: v for k, v in shared.items()})
  channels, patch = int(found["in_channels"]), int(found["patch_size"])
  for name in ("proj_out_2.weight", "proj_out_2.bias"):  # a learned variance's half is dropped
    value = tensors[name]
    tensors[name] = value.reshape(patch, patch, -1, *value.shape[1:])[:, :, :channels].reshape(-1, *value.shape[1:])
  return read_params(where, families.abstract_model(family)[1], tensors)
