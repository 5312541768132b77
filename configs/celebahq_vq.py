"""The paper-scale tokenizer: CelebA-HQ 256x256 -> a 16x16 grid of 1,024 codes (stage 1 of celebahq_tokens.py).

    python -m conprediff_jax.main --config=configs/celebahq_vq.py --workdir=workdirs/celebahq_vq \
        --config.data.data_dir=<TFDS data_dir holding celebahq256> --config.loss.lpips_weights=lpips_vgg.safetensors
    # celebahq256 from the CelebA-HQ images: python -m conprediff_jax.data.prepare --images=CelebA-HQ-img \
    #     --name=celebahq256 --data_dir=<TFDS data_dir> --resolution=256   (docs/datasets.md)

A convolutional VQ-VAE with four halvings (widths 128-128-256-256-512), an EMA codebook with dead-code restarts,
trained with VQGAN's recipe (taming-transformers' VQLPIPSWithDiscriminator and its faces configs): L1 + LPIPS-VGG
(weight 1) + commitment, and from step 30,001 a patch discriminator's hinge term at adaptive weight x 0.8. LPIPS needs
ImageNet weights you supply: add `--config.loss.lpips_weights=lpips_vgg.safetensors` (docs/evaluation.md), or
`--config.loss.perceptual_weight=0` to train without it. Sized for a TPU v4-8 (batch 64, bf16): the TPU compiler
fits its train step, LPIPS and discriminator included, in 12.4 GiB of a v4 chip's 30.75 (`--mode=compile
--topology=v4-8`, docs/scaling.md). Not run at this size here (no accelerator, no CelebA-HQ on the build machine);
tests/test_paper_configs.py builds it and trains one step at reduced size.
"""

import ml_collections

from configs import digits_vq


def get_config() -> ml_collections.ConfigDict:
  config = digits_vq.get_config()
  config.data.name = "tfds"
  config.data.tfds_name = "celebahq256"
  config.data.split = "train[:29000]"
  config.data.image_size = 256
  config.data.channels = 3
  config.data.num_classes = 0

  config.model.channels = 128
  config.model.channel_mults = (1, 1, 2, 2, 4)  # four halvings: 256 -> 16
  config.model.num_res_blocks = 2
  config.model.num_groups = 32
  config.model.codebook_size = 1024
  config.model.code_dim = 64
  config.model.dtype = "bfloat16"

  config.loss.update(pixel="l1", perceptual_weight=1.0, adversarial_weight=0.8, disc_start=30_001, disc_layers=3,
                     disc_channels=64, disc_learning_rate=2e-4)
  config.train.steps = 200_000
  config.train.batch_size = 64
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 1000
  config.train.ema_decay = 0.999
  config.train.log_every = 100
  config.checkpoint.every_steps = 5000

  config.sample.num_images = 16
  config.eval.split = "train[29000:]"
  config.eval.num_samples = 1000
  config.eval.batch_size = 64
  config.eval.metric = "reconstruction_mse"
  return config
