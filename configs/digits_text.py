"""Text-conditional digits with classifier-free guidance: the default UNet drawing what a prompt says.

    python -m conprediff_jax.main --config=configs/digits_text.py --workdir=workdirs/digits_text
    python -m conprediff_jax.main --config=configs/digits_text.py --workdir=workdirs/digits_text --mode=sample \
        --config.sample.prompts='the digit 3|a handwritten nine|seven, written by hand'
    python -m conprediff_jax.main --config=configs/digits_text.py --workdir=workdirs/digits_text --mode=eval \
        --config.sample.prompts_file=configs/prompts/digits_heldout.txt     # phrasings never trained on

The default config (same UNet, steps and context loss) with text: every digit gets a caption made from its label
(a prefix, the digit as a word or a numeral, a suffix: "a handwritten seven", "the digit 7", "seven, written by
hand", ...; data/digits.py), a small byte-level transformer (config.text) encodes it, and every UNet attention
cross-attends to it (diffusers' Transformer2DModel layout). 10% of examples see the empty prompt
(`train.cond_dropout`): the unconditional model that guidance subtracts. `samples.png` has one prompt per row
(config.sample.prompts, in turn), `samples.npz` the `prompts` and the digit each names (`labels`) beside the
`images`. `--mode=eval` scores 512 samples with FD-digits and `class_accuracy` (how often the digits classifier
reads the digit the prompt names). Results to expect: README "Conditioning and guidance", "Text".
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.text_conditional = True
  config.data.captions = "digit_templates"
  config.train.cond_dropout = 0.1
  config.sample.guidance_scale = 1.5
  config.sample.prompts = ("a handwritten zero|the digit 1|two, written by hand|a handwritten three|the digit 4|"
                           "five, written by hand|a handwritten six|the digit 7|eight, written by hand|"
                           "a handwritten nine")
  # Its figures (docstring, README) were measured with DDIM-50, the default's sampler when they were taken.
  config.sample.update(sampler="ddim", steps=50, spacing="uniform", sigma_max=0.0)
  return config
