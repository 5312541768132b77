"""Inpainting digits in latent space, in LDM's mask-conditioned form: the latent UNet of configs/digits_latent.py
also reads the mask at the latent grid and the latents of the masked image (its unknown pixels set to 0) as extra
input channels, as LDM's and Stable Diffusion's inpainting models do.

    python -m conprediff_jax.main --config=configs/digits_kl.py --workdir=workdirs/digits_kl         # stage 1, once
    python -m conprediff_jax.main --config=configs/digits_latent_inpaint.py --workdir=workdirs/digits_latent_inpaint
    python -m conprediff_jax.main --config=configs/digits_latent_inpaint.py --workdir=workdirs/digits_latent_inpaint \
        --mode=inpaint --config.inpaint.mask=box

Trained like configs/digits_inpaint.py (the first 1,600 digits, a random rectangular hole or its complement per
example, 10% with nothing known), on the autoencoder's 8x8x2 latents; a latent position counts as known when all
its 2x2 pixels are. `--mode=inpaint` fills the held-out digits with 50 DDIM steps in latent space, decodes, and
pastes the known pixels back; `--mode=eval` adds the masked error under four generated masks. On a 2-core CPU the
autoencoder trains in about 10 minutes and this model in about 5 (2026-12-07, under load). What to expect: masked
MSE 0.266 (box), 0.236 (half), 0.129 (border) on 128 held-out digits, worse than the pixel mask-conditioned UNet's
(docs/benchmarks.md, "Inpainting", with the reason).
"""

from configs import digits_inpaint, digits_latent


def get_config():
  config = digits_latent.get_config()
  pixel = digits_inpaint.get_config()
  config.data.split = pixel.data.split
  config.model.mask_conditional = True
  config.train.cond_dropout = pixel.train.cond_dropout
  config.sample.update(pixel.sample)
  config.eval.inpaint_masks = pixel.eval.inpaint_masks
  return config
