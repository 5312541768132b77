"""The latent tasks' first stages: a KL autoencoder at 256x256 per dataset, in diffusers' AutoencoderKL layout.

    python -m conprediff_jax.main --config=configs/paper_kl.py:celebahq --workdir=workdirs/celebahq_kl \
        --config.loss.lpips_weights=lpips_vgg.safetensors
    # also :ffhq, :lsun_church, :lsun_bedroom, :coco; the data first (docs/datasets.md), e.g.
    # python -m conprediff_jax.data.prepare --images=CelebA-HQ-img --name=celebahq256 --data_dir=~/tensorflow_datasets \
    #     --resolution=256

LDM's first stages by downsampling: f4 (64x64x3 latents; CelebA-HQ, FFHQ, LSUN bedrooms) and f8 (32x32x4; LSUN
churches, COCO), widths 128-256-512(-512), two resnets per level, trained with LDM's recipe
(ldm.modules.losses.LPIPSWithDiscriminator in its autoencoder_kl_64x64x3 and _32x32x4 configs): L1 + LPIPS-VGG
(weight 1) + KL x 1e-6, and from step 50,001 a patch discriminator's hinge term at adaptive weight x 0.5. LPIPS needs
ImageNet weights you supply: add `--config.loss.lpips_weights=lpips_vgg.safetensors` (docs/evaluation.md), or
`--config.loss.perceptual_weight=0` to train without it. A diffusers AutoencoderKL (e.g. a Stable Diffusion VAE,
f8) can stand in for it: `--config.first_stage.workdir=<its folder>` on the latent config. Sized for a TPU v4-8
(batch 64, bf16): the TPU compiler fits the f4 stage's train step, LPIPS and discriminator included, in 21.3 GiB of
a v4 chip's 30.75 and the f8 stage's in 18.3 (`--mode=compile --topology=v4-8`, docs/scaling.md); not run at this
size here. tests/test_paper_configs.py builds each and trains one at reduced size.
"""

from configs import digits_kl
from configs import paper


def get_config(task: str = "celebahq"):
  if task not in paper.LATENT_DATA:
    raise ValueError(f"configs/paper_kl.py:<task>: task must be one of {sorted(paper.LATENT_DATA)}, got {task!r}")
  tfds_name, factor, latent_channels = paper.LATENT_DATA[task]
  config = digits_kl.get_config()
  config.data.update(name="tfds", tfds_name=tfds_name, data_dir="~/tensorflow_datasets", split="train[:-1000]",
                     image_size=256, channels=3, num_classes=0)
  config.model.update(channels=128, channel_mults=(1, 2, 4) if factor == 4 else (1, 2, 4, 4), num_res_blocks=2,
                      num_groups=32, latent_channels=latent_channels, kl_weight=1e-6, dtype="bfloat16")
  config.train.update(steps=200_000, batch_size=64, learning_rate=4.5e-6 * 64, warmup_steps=1000, ema_decay=0.999,
                      log_every=100)
  config.loss.update(pixel="l1", perceptual_weight=1.0, adversarial_weight=0.5, disc_start=50_001, disc_layers=3,
                     disc_channels=64, disc_learning_rate=config.train.learning_rate)
  config.checkpoint.update(every_steps=10_000, max_to_keep=3)
  config.sample.update(num_images=16, batch_size=16)
  config.eval.update(split="train[-1000:]", num_samples=1000, batch_size=64, metric="reconstruction_mse")
  return config
