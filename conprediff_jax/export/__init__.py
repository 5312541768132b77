"""Hand-off to PyTorch: the EMA denoiser as a diffusers pipeline folder (no torch needed to write it)."""

from conprediff_jax.export.diffusers_export import (
    diffusers_state_dict_shapes,
    export_pipeline,
    scheduler_config,
    to_diffusers_state_dict,
    unet2d_config,
)
