"""PyTorch formats, above the families: a family names the formats its inference model goes to and comes from
(`Family.EXPORT_FORMAT`, `Family.IMPORT_FORMAT`), and the converters live here, so that no family imports them.

    export(family, weights, out_dir)      --mode=export: diffusers folders (diffusers_export.py, docs/pytorch.md)
    import_weights(family, path)          config.model.init_from: its parameters from a diffusers folder

A family with no format, or a model its format cannot express, is a one-line ValueError.
"""

from collections.abc import Callable

from conprediff_jax import atomic_files, families
from conprediff_jax.export import diffusers_dit, diffusers_export, diffusers_import
from conprediff_jax.export.diffusers_export import (
    diffusers_state_dict_shapes,
    export_pipeline,
    scheduler_config,
    to_diffusers_state_dict,
    unet2d_config,
)


def _export_unet(family, weights, out_dir: str) -> str:
  """A Gaussian model: a DDIMPipeline, an LDMPipeline on its autoencoder, or a UNet2DConditionModel with our text
  encoder (and its AutoencoderKL, in latent space)."""
  if family.mask_conditional:
    raise ValueError("--mode=export: a mask-conditioned UNet (config.model.mask_conditional) reads extra input "
                     "channels that a diffusers DDIMPipeline does not pass; export an unconditional one")
  latent = family.latent
  autoencoder = None if latent is None else (latent.autoencoder_config, latent.stage.weights, latent.scaling_factor)
  if family.config.model.text_conditional:
    return diffusers_export.export_text_to_image(family.denoiser_config, weights, out_dir, autoencoder)
  if autoencoder is None:
    return diffusers_export.export_pipeline(family.config, weights, out_dir)
  return diffusers_export.export_latent_pipeline(family.denoiser_config, weights, *autoencoder, out_dir)


def _import_unet(family, path: str) -> dict:
  if family.mask_conditional:
    raise ValueError("config.model.init_from: a diffusers UNet imports as an unconditional, class- or "
                     "text-conditional UNet; this config's UNet also reads a mask")
  return diffusers_import.load_unet_params(path, family.denoiser_config)


EXPORTERS: dict[str, Callable] = {
    "diffusers_unet": _export_unet,
    "diffusers_dit": diffusers_dit.export,
    "diffusers_autoencoder_kl": lambda family, weights, out_dir: diffusers_export.export_autoencoder(
        family.config, weights, out_dir),
    "diffusers_vqmodel": lambda family, weights, out_dir: diffusers_export.export_vqmodel(
        family.config, weights, out_dir),
}
IMPORTERS: dict[str, Callable] = {"diffusers_unet": _import_unet,
                                  "diffusers_dit": lambda family, path: diffusers_dit.load_params(path, family)}


def import_overrides(path: str) -> tuple[str, dict]:
  """(the model's folder, the config overrides that build it here) of the diffusers denoiser at `path`: a
  DiTTransformer2DModel, or a UNet2DModel (a pipeline folder, or the model's own)."""
  try:
    found = diffusers_dit.read_config(path)
  except (FileNotFoundError, ValueError):
    folder = diffusers_import.unet_folder(path)
    return folder, diffusers_import.config_overrides(diffusers_import.read_unet_config(folder))
  return diffusers_dit.folder(path), diffusers_dit.config_overrides(found)


def export(family, weights, out_dir: str) -> str:
  """Writes `family`'s inference model (its EMA weights) in its export format into `out_dir`, whole or not at all
  (it replaces a previous export in one step); returns the folder."""
  if family.EXPORT_FORMAT not in EXPORTERS:
    raise ValueError(f"--mode=export: the {family.config.family!r} family has no exporter (the families with "
                     f"one: {_families_with('EXPORT_FORMAT')})")
  with atomic_files.replacing_folder(out_dir) as tmp:
    EXPORTERS[family.EXPORT_FORMAT](family, weights, tmp)
  return out_dir


def import_weights(family, path: str) -> dict:
  """`family`'s inference parameters (a pure dict) read from the checkpoint at `path` in its import format: what a
  fresh run starts from with config.model.init_from."""
  if family.IMPORT_FORMAT not in IMPORTERS:
    raise ValueError(f"config.model.init_from: the {family.config.family!r} family imports no weights (the "
                     f"families that do: {_families_with('IMPORT_FORMAT')})")
  return IMPORTERS[family.IMPORT_FORMAT](family, path)


def _families_with(attribute: str) -> str:
  return ", ".join(repr(name) for name, cls in families.FAMILIES.items() if getattr(cls, attribute))


__all__ = ["EXPORTERS", "IMPORTERS", "diffusers_state_dict_shapes", "export", "export_pipeline", "import_overrides",
           "import_weights", "scheduler_config", "to_diffusers_state_dict", "unet2d_config"]
