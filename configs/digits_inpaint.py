"""Inpainting digits with a mask-conditioned UNet: the default UNet that also reads the known pixels and the mask.

    python -m conprediff_jax.main --config=configs/digits_inpaint.py --workdir=workdirs/digits_inpaint
    python -m conprediff_jax.main --config=configs/digits_inpaint.py --workdir=workdirs/digits_inpaint \
        --mode=inpaint --config.inpaint.mask=strokes

The default config (same UNet, steps and context loss) trained on the first 1,600 digits, each with a random
rectangular hole (or its complement: outpainting), and 10% with nothing known (`train.cond_dropout`), so that it
still samples from scratch. `--mode=inpaint` fills the held-out digits (`inpaint.split`, the last 197) under the
chosen masks with 50 DDIM steps and pastes the known pixels back: they return exactly. For any unconditional
Gaussian checkpoint (e.g. workdirs/default) `--mode=inpaint` uses RePaint instead, with no retraining. `--mode=eval`
adds the masked error under four generated masks to the sample metrics (no LPIPS: no ImageNet weights here).
Results to expect: README "Inpainting".
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.split = "train[:1600]"  # the inpainting digits (inpaint.split) stay held out
  config.model.mask_conditional = True
  config.train.cond_dropout = 0.1
  # Its figures (docstring, README) were measured with DDIM-50, the default's sampler when they were taken.
  config.sample.update(sampler="ddim", steps=50, spacing="uniform", sigma_max=0.0)
  config.eval.inpaint_masks = ("box", "half", "lines", "super_resolve")  # --mode=eval's masked_mse under each
  return config
