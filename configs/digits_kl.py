"""Stage 1 of the latent model: a KL autoencoder of the embedded digits (16x16x1 -> 8x8x2 latents).

    python -m conprediff_jax.main --config=configs/digits_kl.py --workdir=workdirs/digits_kl

Trains an AutoencoderKL (diffusers' layout: widths 32, 64, one resnet per level, 2 latent channels) on the first
1,600 digits and writes `samples.png`: held-out digits (the last 197) over their reconstructions. `--mode=eval`
scores the held-out reconstructions (mse, FD-digits, class accuracy) and reports the latents' standard deviation;
`--mode=export` writes a diffusers AutoencoderKL folder. Then configs/digits_latent.py trains a UNet on its
latents. Results to expect are in docs/pytorch.md ("Latent diffusion on the digits").
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.family = "kl_autoencoder"
  del config["diffusion"]
  config.data.split = "train[:1600]"  # the rest is held out for eval.split

  config.model = ml_collections.ConfigDict()
  config.model.name = "kl"
  config.model.channels = 32
  config.model.channel_mults = (1, 2)  # one halving: 8x8 latents
  config.model.num_res_blocks = 1
  config.model.num_groups = 8
  config.model.latent_channels = 2
  # LDM's KL weight is 1e-6 per pixel at 256^2 with a perceptual loss; a plain squared error on digits wants
  # somewhat more to keep the latents near N(0, I) without blurring.
  config.model.kl_weight = 1e-4
  config.model.dtype = "float32"

  config.context.weight = 0.0  # an autoencoder has no context loss (see DESIGN.md); the keys stay for one schema

  config.train.steps = 1500
  config.train.batch_size = 32
  config.train.learning_rate = 1e-3
  config.train.ema_decay = 0.99

  config.sample = ml_collections.ConfigDict()
  config.sample.num_images = 32  # held-out digits shown with their reconstructions
  config.sample.batch_size = 32

  config.eval.split = "train[1600:]"  # what reconstructions are scored on
  config.eval.num_samples = 197
  config.eval.batch_size = 197
  return config
