"""Stage 1 of the token model: a VQ tokenizer of the embedded digits (16x16 -> a 4x4 grid of 128 codes).

    python -m conprediff_jax.main --config=configs/digits_vq.py --workdir=workdirs/digits_vq

Trains a convolutional VQ-VAE (EMA codebook, dead codes restarted from the batch's encodings) on the first 1,600
digits and writes `samples.png`: held-out digits (the last 197) over their reconstructions. `--mode=eval` scores
the held-out reconstructions (mse, FD-digits, class accuracy) and the codebook (fraction of codes used,
perplexity). Then configs/digits_tokens.py trains the masked-token model on its tokens. Results to expect are in
docs/benchmarks.md ("The token model").
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.family = "autoencoder"
  del config["diffusion"]
  config.data.split = "train[:1600]"  # the rest is held out for eval.split

  config.model = ml_collections.ConfigDict()
  config.model.name = "vq"
  config.model.channels = 32
  # Two halvings: 4x4 tokens. An 8x8 grid (one halving) reconstructs better but is one token per pixel of the
  # original 8x8 digits, which a small transformer then models far worse (docs/benchmarks.md, "The token model").
  config.model.channel_mults = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.num_groups = 8
  config.model.codebook_size = 128
  config.model.code_dim = 8
  config.model.commitment_cost = 0.25
  config.model.codebook_decay = 0.99
  config.model.dead_code_threshold = 0.03  # a code used < 3% as often as under uniform use is restarted
  # "vqvae": the encoder and decoder of models/vq.py | "diffusers": diffusers' VQModel module for module (mid-block
  # attention, quant convs), exported by --mode=export and read back as a tokenizer (docs/pytorch.md)
  config.model.layout = "vqvae"
  config.model.dtype = "float32"

  config.context.weight = 0.0  # a tokenizer has no context loss (see DESIGN.md); the keys stay for one schema

  # The autoencoder recipe of LDM and VQGAN (conprediff_jax/families/adversarial.py); off here: pixel error alone.
  config.loss = ml_collections.ConfigDict()
  config.loss.pixel = "l2"               # "l1" (LDM's, VQGAN's) | "l2": the per-pixel error
  config.loss.perceptual_weight = 0.0    # LPIPS-VGG; needs loss.lpips_weights (ImageNet weights: none ship here)
  config.loss.lpips_weights = ""         # .safetensors from `python -m conprediff_jax.evaluation.convert_lpips_weights`
  config.loss.adversarial_weight = 0.0   # the patch discriminator's hinge term, times the adaptive weight; 0: no
  #                                        discriminator at all
  config.loss.disc_start = 0             # the step from which the discriminator and its term count
  config.loss.disc_layers = 3            # the discriminator's halvings (pix2pix: 3, a 70x70 patch)
  config.loss.disc_channels = 64         # its first width, doubled per layer up to 8x
  config.loss.disc_learning_rate = 1e-4  # Adam, betas (0.5, 0.9)

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
