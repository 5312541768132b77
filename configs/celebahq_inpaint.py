"""CelebA-HQ 256x256 inpainting: an unconditional pixel-space UNet with the context loss, filled in by RePaint
(`--mode=inpaint`), as the paper's inpainting builds on RePaint's guided-diffusion models.

    python -m conprediff_jax.data.prepare --images=CelebA-HQ-img --name=celebahq256 \
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/celebahq_inpaint.py --workdir=workdirs/celebahq_inpaint
    python -m conprediff_jax.main --config=configs/celebahq_inpaint.py --workdir=workdirs/celebahq_inpaint \
        --mode=inpaint --config.inpaint.images=<held-out faces, 256x256> --config.inpaint.mask=box

The network follows guided-diffusion's 256x256 layout at half its width (128 channels, mults (1, 1, 2, 2, 4, 4), 2
res blocks, attention at 32, 16 and 8) in diffusers' block form (no scale-shift norm, no learned variance). Sized
for a TPU v4-32 (global batch 256 in one pass, 16 images per chip, bf16): the TPU compiler fits its train step in
13.9 GiB of a v4 chip's 30.75 and predicts at least 0.125 s a step (`--mode=compile --topology=v4-32`;
docs/scaling.md: four micro-batches of 4 per chip cost 4.4 times as long). Target: the
paper's CelebA-HQ inpainting LPIPS 0.022: `--mode=eval --config.eval.lpips_weights=lpips_vgg.safetensors` scores the
held-out faces filled under five generated masks (docs/inpainting.md), beside FID with Inception weights. Not run
at this size here (no accelerator); tests/test_paper_configs.py runs it at reduced size.
"""

from configs import paper


def get_config():
  config = paper.pixel_diffusion(
      tfds_name="celebahq256", image_size=256, channels=128, channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
      attention_resolutions=(32, 16, 8), num_heads=4, dropout=0.0, steps=500_000, batch_size=256,
      learning_rate=1e-4, schedule="linear")
  config.inpaint.update(images="", split="train[27000:]", mask="box", num_images=100, steps=250)
  config.eval.inpaint_masks = ("strokes", "half", "lines", "super_resolve", "border")  # RePaint's, LaMa's aside
  config.data.split = "train[:27000]"  # the last 3,000 faces stay out of training, for inpainting
  return config
