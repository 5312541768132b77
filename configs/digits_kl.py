"""Stage 1 of the latent model: a KL autoencoder of the embedded digits (16x16x1 -> 8x8x2 latents).

    python -m conprediff_jax.main --config=configs/digits_kl.py --workdir=workdirs/digits_kl

Trains an AutoencoderKL (diffusers' layout: widths 32, 64, one resnet per level, 2 latent channels) on the first
1,600 digits and writes `samples.png`: held-out digits (the last 197) over their reconstructions. `--mode=eval`
scores the held-out reconstructions (mse, FD-digits, class accuracy) and reports the latents' standard deviation;
`--mode=export` writes a diffusers AutoencoderKL folder. Then configs/digits_latent.py trains a UNet on its
latents. Results to expect are in docs/pytorch.md ("Latent diffusion on the digits").
"""

import ml_collections

from configs import digits_vq


def get_config() -> ml_collections.ConfigDict:
  """The tokenizer's data, training, sampling and evaluation settings (configs/digits_vq.py), another network."""
  config = digits_vq.get_config()
  config.family = "kl_autoencoder"

  config.model = ml_collections.ConfigDict()
  config.model.name = "kl"           # the KL autoencoder (models/kl.py), the one network here
  config.model.channels = 32
  config.model.channel_mults = (1, 2)  # one halving: 8x8 latents
  config.model.num_res_blocks = 1
  config.model.num_groups = 8
  config.model.latent_channels = 2
  # LDM's KL weight is 1e-6 per pixel at 256^2 with a perceptual loss; a plain squared error on digits wants
  # somewhat more to keep the latents near N(0, I) without blurring.
  config.model.kl_weight = 1e-4
  config.model.dtype = "float32"
  return config
