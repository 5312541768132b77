"""Unconditional LSUN bedroom 256x256 by latent diffusion with the context loss.

    python -m conprediff_jax.data.prepare --images=<exported bedroom images> --name=lsun_bedroom256 \
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/paper_kl.py:lsun_bedroom --workdir=workdirs/lsun_bedroom_kl
    python -m conprediff_jax.main --config=configs/lsun_bedroom.py --workdir=workdirs/lsun_bedroom

The CelebA-HQ layout (configs/celebahq.py: ~270M-parameter UNet on f4 latents) on LSUN bedrooms. Sized for a TPU
v4-32 (global batch 256, bf16, 500k steps; the program of configs/celebahq.py, 10.5 GiB per v4 chip by the TPU
compiler, docs/scaling.md). Target: the paper's LSUN-bedroom FID (not restated here); LDM-4 reported 2.95. Not run
at this size here; tests/test_paper_configs.py builds it and trains one step at reduced size.
"""

from configs import paper


def get_config():
  return paper.latent_diffusion("lsun_bedroom", channels=224, channel_mults=(1, 2, 3, 4),
                                attention_resolutions=(32, 16, 8), num_heads=7, steps=500_000, batch_size=256,
                                learning_rate=1e-4)
