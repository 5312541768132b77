"""Class-conditional ImageNet 256x256 with DiT-XL/2 on f8 latents and the context loss: the DiT paper's model and
recipe (Peebles & Xie 2023), with the context head reading its 16x16 token grid.

    python -m conprediff_jax.data.prepare --images=<ILSVRC2012 train> --name=imagenet256 \\
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/paper_kl.py:imagenet --workdir=workdirs/imagenet_kl   # stage 1
    python -m conprediff_jax.main --config=configs/dit_xl2.py --workdir=workdirs/dit_xl2                # stage 2
    python -m conprediff_jax.main --config=configs/dit_xl2.py --workdir=workdirs/dit_xl2 --mode=eval \\
        --config.eval.inception_weights=inception_fid.safetensors

The DiT paper encoded with Stable Diffusion's f8 VAE (sd-vae-ft-ema); a diffusers AutoencoderKL folder stands in
for stage 1 (`--config.first_stage.workdir=<its folder>`, docs/pytorch.md), and a released diffusers DiT-XL/2
(DiTTransformer2DModel; its learned-variance half is dropped) is fine-tuned with the context loss by
`--config.model.init_from=<its folder>`. DiT-XL/2: width 1152, 28 blocks, 16 heads, 2x2 patches of the 32x32x4
latents, 675M parameters (the paper's count, tests/test_dit.py); linear schedule, eps, AdamW at a constant 1e-4,
batch 256, EMA 0.9999, 10% of labels dropped; sampled with 250 DDPM steps at guidance 1.5, as the paper's FID 2.27
(7M steps) was. Sized for a TPU v4-32 (bf16; the batch over 4 groups of 4 chips, the weights, EMA and Adam
moments split within each group): the TPU compiler fits its train step in 10.4 GiB of a v4 chip's 30.75
(`--mode=compile --topology=v4-32`, docs/scaling.md), 0.109 s a step by the roofline, at most 53% of the chips' bf16
peak: at least 8.8 days to 7M steps (the batch over all 16 chips instead, before the points-major head: 16.9 GiB,
0.149 s, 39%). Target: FID
2.27. Not run at this size here; tests/test_paper_configs.py builds it and trains one step at reduced size.
"""

from configs import paper


def get_config():
  config = paper.latent_dit("imagenet", size="XL", patch_size=2, num_classes=1000, steps=7_000_000,
                            batch_size=256, learning_rate=1e-4)
  config.sample.update(sampler="ddpm", steps=250, spacing="uniform", guidance_scale=1.5)
  # fsdp over 4 chips: a quarter of the 10.8 GB of float32 state per chip, and of the optimiser update's traffic
  config.mesh.shape = (-1, 4)
  return config
