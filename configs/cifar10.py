"""CIFAR-10 32x32, unconditional: DDPM's UNet (Ho et al. 2020: 128 channels, mults (1, 2, 2, 2), 2 res blocks,
attention at 16x16, dropout 0.1, linear betas, 800k steps at batch 128) with the context loss.

    python -m conprediff_jax.data.prepare --images=<cifar10 class folders> --name=cifar10_folders \
        --data_dir=~/tensorflow_datasets --resolution=32 --crop=none              # docs/datasets.md
    python -m conprediff_jax.main --config=configs/cifar10.py --workdir=workdirs/cifar10
    python -m conprediff_jax.main --config=configs/cifar10.py --workdir=workdirs/cifar10 --mode=eval \
        --config.eval.inception_weights=<pt_inception-2015-12-05 as safetensors>  # FID on 50k samples

Sized for a TPU v4-8 (global batch 128; ~36M parameters; bf16 compute with float32 weights, Adam moments and EMA,
where DDPM computed in float32: on the digits the two train alike, docs/scaling.md; the state split over the four
chips): the TPU compiler fits its train step in 1.0 GiB of a v4 chip's 30.75 and predicts at least 0.0096 s a step
(`--mode=compile --topology=v4-8`). The
ConPreDiff paper reports no CIFAR-10 figure; DDPM's FID 3.17 with this network is the reference to beat. Not run at
this size here (no accelerator); tests/test_paper_configs.py builds it and runs one train and one sampling step at
reduced size.
"""

from configs import paper


def get_config():
  config = paper.pixel_diffusion(
      tfds_name="cifar10_folders", image_size=32, channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
      attention_resolutions=(16,), num_heads=1, dropout=0.1, steps=800_000, batch_size=128, learning_rate=2e-4,
      schedule="linear")
  config.train.warmup_steps = 5000
  # fsdp over every chip: each updates a quarter of the float32 state (parameters, EMA, Adam moments), the update
  # having been a third of the step's HBM traffic with the state whole on every chip (docs/scaling.md)
  config.mesh.shape = (1, -1)
  return config
