"""A diffusion transformer on the embedded digits: the default's data, process, sampler and context loss, with a
DiT (models/dit.py) instead of the UNet: 2x2 patches of the 16x16 digits, an 8x8 grid of tokens on which the
context head predicts each token's neighbourhood of patches.

    python -m conprediff_jax.main --config=configs/digits_dit.py --workdir=workdirs/digits_dit
    python -m conprediff_jax.main --config=configs/digits_dit.py --workdir=workdirs/digits_dit --mode=eval

Sized for a 2-core CPU: width 128, 6 blocks, 4 heads (a DiT-S/2 cut to a third of its width and half its depth).
Time and FD-digits to expect, beside the UNet's at equal training time: docs/families.md, "The DiT".
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.update(name="dit", patch_size=2, width=128, depth=6, num_heads=4, mlp_ratio=4)
  return config
