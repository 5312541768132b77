"""The paper's headline setting: unconditional CelebA-HQ 256x256 by latent diffusion with the context loss.

    python -m conprediff_jax.data.prepare --images=CelebA-HQ-img --name=celebahq256 \
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/paper_kl.py:celebahq --workdir=workdirs/celebahq_kl   # stage 1
    python -m conprediff_jax.main --config=configs/celebahq.py --workdir=workdirs/celebahq               # stage 2
    python -m conprediff_jax.main --config=configs/celebahq.py --workdir=workdirs/celebahq --mode=eval \
        --config.eval.inception_weights=fid_inception.safetensors                 # FID of 50,000 samples (README)

An LDM-4-sized UNet (channels 224, mults (1, 2, 3, 4), two resnets per level, attention at 32, 16 and 8; ~270M
parameters) on the 64x64x3 latents of the f4 KL autoencoder, linear schedule, eps-prediction, context head on the
latent grid (half of the positions scored per step). Sized for a TPU v4-32 (global batch 256, bf16, 500k steps): the
TPU compiler fits its train step in 10.5 GiB of a v4 chip's 30.75 (`--mode=compile --topology=v4-32`,
docs/scaling.md). Target: the paper's CelebA-HQ FID (its unconditional-generation table; not restated here); LDM-4
reported 5.11. Not run at this size here (no accelerator); tests/test_paper_configs.py builds it at full size and
trains and samples one step at reduced size.
"""

from configs import paper


def get_config():
  return paper.latent_diffusion("celebahq", channels=224, channel_mults=(1, 2, 3, 4),
                                attention_resolutions=(32, 16, 8), num_heads=7, steps=500_000, batch_size=256,
                                learning_rate=1e-4)
