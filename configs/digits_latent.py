"""Latent diffusion on the embedded digits: the default's UNet (context loss on) on the 8x8x2 latents of the KL
autoencoder of configs/digits_kl.py, sampled and decoded to 16x16 digits.

    python -m conprediff_jax.main --config=configs/digits_kl.py --workdir=workdirs/digits_kl         # stage 1, once
    python -m conprediff_jax.main --config=configs/digits_latent.py --workdir=workdirs/digits_latent

The UNet has two levels (8x8 and 4x4, attention at 4x4) instead of the pixel model's three; everything else,
including the 1,300 steps and the sampler, is configs/default.py. The context head predicts each latent position's
neighbourhood of clean latents. `--mode=eval` scores the decoded samples with FD-digits like the pixel model;
`--mode=export` writes a diffusers LDMPipeline folder (UNet, AutoencoderKL, DDIM scheduler). Results to expect are
in docs/pytorch.md ("Latent diffusion on the digits").
"""

from configs import default


def get_config():
  config = default.get_config()
  config.first_stage.workdir = "workdirs/digits_kl"
  config.first_stage.config = "configs/digits_kl.py"
  config.model.channel_mults = (1, 2)
  config.model.attention_resolutions = (4,)  # the latent grid's 4x4 level
  return config
