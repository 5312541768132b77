"""Unconditional CelebA-HQ 256x256 with a latent DiT-B/2 and the context loss: the transformer counterpart of
configs/celebahq.py (LDM-4's UNet), on the same f4 autoencoder's 64x64x3 latents.

    python -m conprediff_jax.data.prepare --images=CelebA-HQ-img --name=celebahq256 --data_dir=~/tensorflow_datasets \\
        --resolution=256                                                          # docs/datasets.md
    python -m conprediff_jax.main --config=configs/paper_kl.py:celebahq --workdir=workdirs/celebahq_kl  # stage 1
    python -m conprediff_jax.main --config=configs/celebahq_dit.py --workdir=workdirs/celebahq_dit     # stage 2

DiT-B/2 (width 768, 12 blocks, 12 heads; 130M parameters) on a 32x32 grid of 2x2 latent patches, trained with the
DiT paper's recipe (linear schedule, eps, AdamW at a constant 1e-4, EMA 0.9999) at celebahq.py's batch of 256 for
500k steps; sampled by the default DPM-Solver++(2M). Sized for a TPU v4-32 (bf16), as celebahq.py: the TPU
compiler fits its train step in 20.2 GiB of a v4 chip's 30.75 (`--mode=compile --topology=v4-32`, docs/scaling.md),
0.145 s a step by the roofline (whose bytes, on a v4, include what the compiler stages in CMEM), at most 40% of the
chips' bf16 peak: about 0.8 days to 500k steps. Target:
celebahq.py's FID (LDM-4 reported 5.11 on CelebA-HQ); no DiT figure on this dataset is published to compare with.
Not run at this size here; tests/test_paper_configs.py builds it and trains one step at reduced size.
"""

from configs import paper


def get_config():
  return paper.latent_dit("celebahq", size="B", patch_size=2, num_classes=0, steps=500_000, batch_size=256,
                          learning_rate=1e-4)
