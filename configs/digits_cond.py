"""Class-conditional digits with classifier-free guidance: the default UNet told which digit to draw.

    python -m conprediff_jax.main --config=configs/digits_cond.py --workdir=workdirs/digits_cond
    python -m conprediff_jax.main --config=configs/digits_cond.py --workdir=workdirs/digits_cond --mode=eval \
        --config.sample.guidance_scale=3   # another scale

The default config (same UNet, steps and context loss) with a class embedding; 10% of training examples see the
null class instead (`train.cond_dropout`), so the one network is also the unconditional model that guidance
subtracts. `samples.png` has one digit class per row (0 at the top), `samples.npz` the requested `labels` beside
the `images`. `--mode=eval` scores 512 samples (classes in turn) with FD-digits and `class_accuracy`: how often
the digits classifier reads the requested class. Results to expect (seed 0, 2-core AMD EPYC, ~3 minutes of
training): at the config's guidance 1.5, class accuracy 97.1% and FD-digits 23.6; without guidance (1.0) 86.1% and
12.4; at 3, 99.8% and 111.2 (README "Conditioning and guidance" has the whole scan).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.class_conditional = True
  config.train.cond_dropout = 0.1
  config.sample.guidance_scale = 1.5  # README "Conditioning and guidance": accuracy vs FD-digits by scale
  # Its figures (docstring, README) were measured with DDIM-50, the default's sampler when they were taken.
  config.sample.update(sampler="ddim", steps=50, spacing="uniform", sigma_max=0.0)
  return config
