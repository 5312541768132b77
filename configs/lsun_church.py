"""Unconditional LSUN church 256x256 by latent diffusion with the context loss.

    python -m conprediff_jax.data.prepare --images=<exported church images> --name=lsun_church256 \
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/paper_kl.py:lsun_church --workdir=workdirs/lsun_church_kl
    python -m conprediff_jax.main --config=configs/lsun_church.py --workdir=workdirs/lsun_church

An LDM-8-sized UNet (channels 192, mults (1, 2, 2, 4, 4), attention at 16, 8 and 4) on the 32x32x4 latents of the f8
KL autoencoder; every latent position scored by the context head. Sized for a TPU v4-32 (global batch 256, bf16,
500k steps; the state split over the 16 chips): the TPU compiler fits its train step in 2.2 GiB of a v4 chip's 30.75
and predicts at least 0.030 s a step (`--mode=compile --topology=v4-32`, docs/scaling.md). Target: the paper's
LSUN-church FID (not restated here); LDM-8 reported 4.02.
Not run at this size here; tests/test_paper_configs.py builds it and trains one step at reduced size.
"""

from configs import paper


def get_config():
  config = paper.latent_diffusion("lsun_church", channels=192, channel_mults=(1, 2, 2, 4, 4),
                                  attention_resolutions=(16, 8, 4), num_heads=8, steps=500_000, batch_size=256,
                                  learning_rate=1e-4)
  # fsdp over every chip: with the float32 state whole on each, its update was 23% of the compiler's cycles
  # (docs/scaling.md, "The state split over chips")
  config.mesh.shape = (1, -1)
  return config
