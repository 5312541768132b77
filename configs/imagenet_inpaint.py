"""ImageNet 256x256 inpainting: a class-conditional pixel-space UNet with the context loss (classifier-free
guidance in place of guided-diffusion's classifier), filled in by RePaint (`--mode=inpaint`).

    python -m conprediff_jax.data.prepare --images=<ILSVRC2012 train> --name=imagenet256 \
        --data_dir=~/tensorflow_datasets --resolution=256                         # docs/datasets.md
    python -m conprediff_jax.main --config=configs/imagenet_inpaint.py --workdir=workdirs/imagenet_inpaint
    python -m conprediff_jax.main --config=configs/imagenet_inpaint.py --workdir=workdirs/imagenet_inpaint \
        --mode=inpaint --config.inpaint.images=<validation images, 256x256> --config.inpaint.mask=half

Same layout as configs/celebahq_inpaint.py at full guided-diffusion width (256 channels), 1,000 classes. Sized for a
TPU v4-64 (global batch 256 in one pass, 8 images per chip, bf16): the TPU compiler fits its train step in 18.2 GiB of
a v4 chip's 30.75 and predicts at least 0.174 s a step (2.0 days to train.steps) (`--mode=compile
--topology=v4-64`, 13 minutes and 17.5 GiB of host memory on a 2-core CPU; docs/scaling.md). Target: the paper's
ImageNet inpainting figures (LPIPS 0.057: `--mode=eval --config.eval.lpips_weights=lpips_vgg.safetensors` scores the
images filled under five generated masks, docs/inpainting.md).
Not run at this size here; tests/test_paper_configs.py runs it at reduced size.
"""

from configs import paper


def get_config():
  config = paper.pixel_diffusion(
      tfds_name="imagenet256", image_size=256, num_classes=1000, channels=256, channel_mults=(1, 1, 2, 2, 4, 4),
      num_res_blocks=2, attention_resolutions=(32, 16, 8), num_heads=4, dropout=0.0, steps=1_000_000,
      batch_size=256, learning_rate=1e-4, schedule="linear")
  config.inpaint.update(images="", mask="half", num_images=100, steps=250)
  config.eval.inpaint_masks = ("strokes", "half", "lines", "super_resolve", "border")  # RePaint's, LaMa's aside
  return config
