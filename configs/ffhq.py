"""Unconditional FFHQ 256x256 by latent diffusion with the context loss (the paper's FFHQ row).

    python -m conprediff_jax.data.prepare --images=images1024x1024 --name=ffhq256 \
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/paper_kl.py:ffhq --workdir=workdirs/ffhq_kl           # stage 1
    python -m conprediff_jax.main --config=configs/ffhq.py --workdir=workdirs/ffhq                       # stage 2
    python -m conprediff_jax.main --config=configs/ffhq.py --workdir=workdirs/ffhq --mode=eval \
        --config.eval.inception_weights=fid_inception.safetensors

The CelebA-HQ layout (configs/celebahq.py: ~270M-parameter UNet on f4 latents) on FFHQ's 70,000 faces. Sized for a
TPU v4-32 (global batch 256, bf16, 500k steps; the program of configs/celebahq.py, 10.5 GiB per v4 chip by the TPU
compiler, docs/scaling.md). Target: the paper's FFHQ-256 FID 2.24. Not run at this size here;
tests/test_paper_configs.py builds it and trains one step at reduced size.
"""

from configs import paper


def get_config():
  return paper.latent_diffusion("ffhq", channels=224, channel_mults=(1, 2, 3, 4), attention_resolutions=(32, 16, 8),
                                num_heads=7, steps=500_000, batch_size=256, learning_rate=1e-4)
