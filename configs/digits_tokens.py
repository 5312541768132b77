"""Stage 2 of the token model: a masked-token transformer over the digits tokenizer's 4x4 grid, context loss on.

    python -m conprediff_jax.main --config=configs/digits_vq.py --workdir=workdirs/digits_vq      # stage 1 first
    python -m conprediff_jax.main --config=configs/digits_tokens.py --workdir=workdirs/digits_tokens

Absorbing-state (masked) discrete diffusion with a cosine mask schedule; cross-entropy on the masked tokens, plus the
context loss on the transformer's final token features against the frozen codebook vectors of the clean
neighbours. Writes `samples.png`: 64 MaskGIT samples (8 parallel decoding steps) decoded by the tokenizer.
`--mode=eval` gives FD-digits on 512 samples, the UNet's protocol. Results to expect are in docs/benchmarks.md
("The token model").

The context loss (λ = 0.1) measurably helps this model: over five paired seeds at 2,048 samples, FD-digits 55.8
with it against 59.3 without, a difference of -3.4 (95% interval [-6.4, -0.4]), and KID-digits -0.0040
([-0.0077, -0.0004]). docs/ablation.md ("The token model") has the table and the command.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.family = "masked"
  del config["diffusion"]

  config.first_stage = ml_collections.ConfigDict()
  config.first_stage.workdir = "workdirs/digits_vq"  # a trained tokenizer ...
  config.first_stage.config = "configs/digits_vq.py"  # ... of this config: its shapes until it is trained

  config.model = ml_collections.ConfigDict()
  config.model.name = "transformer"  # the masked-token transformer (models/transformer.py), the one network here
  config.model.width = 64
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 4
  config.model.dropout = 0.0
  config.model.class_conditional = False
  config.model.text_conditional = False  # a text slot: the prompt's context vectors ahead of the grid
  config.model.dtype = "float32"
  config.model.remat = False  # recompute each block's activations in the backward pass: less memory

  config.masking = ml_collections.ConfigDict()
  config.masking.schedule = "cosine"  # masked fraction gamma(r), r ~ U(0, 1): "cosine" | "linear" | "square"

  # Strides (1, 2, 3) on the 4x4 grid: at stride 3 only the border tokens have neighbours, and only they are scored.
  config.context.position_fraction = 0.25  # 16 tokens per image: score 4 of each image's each step

  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 100

  config.sample = ml_collections.ConfigDict()
  config.sample.num_images = 64
  config.sample.batch_size = 64        # per sampler call; more images are streamed to samples/, a batch per file
  config.sample.sampler = "maskgit"
  config.sample.steps = 8              # parallel decoding steps (at most the 16 tokens)
  config.sample.schedule = "cosine"    # how many stay masked after each step: "cosine" | "linear" | "square"
  config.sample.temperature = 1.0      # of the token distribution sampled at each step
  config.sample.choice_temperature = 4.5  # Gumbel noise on the confidences that pick what stays masked; anneals to 0
  config.sample.guidance_scale = 1.0   # conditional models: classifier-free guidance on the logits
  default.prompt_settings(config.sample)
  return config
