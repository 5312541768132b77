"""The paper-scale token model: a masked-token transformer over CelebA-HQ's 16x16 VQ tokens, context loss on.

    python -m conprediff_jax.main --config=configs/celebahq_vq.py --workdir=workdirs/celebahq_vq \
        --config.data.data_dir=<TFDS data_dir>                                   # stage 1 first
    python -m conprediff_jax.main --config=configs/celebahq_tokens.py --workdir=workdirs/celebahq_tokens \
        --config.data.data_dir=<TFDS data_dir>

256 tokens per image, a 16-layer, 512-wide bidirectional transformer (about 50M parameters), cosine mask schedule,
MaskGIT decoding in 12 steps; the context head reads the final token features and predicts the frozen codebook
vectors of each token's neighbours at strides 1, 2, 3. Sized for a TPU v4-8 (global batch 256, bf16): the TPU
compiler fits its train step in 7.1 GiB of a v4 chip's 30.75 (`--mode=compile --topology=v4-8`, docs/scaling.md).
Not run at this size here (no accelerator, no CelebA-HQ on the build machine); tests/test_paper_configs.py builds it
and runs one train step and one decoding step at reduced size. FID needs `--config.eval.inception_weights` (README,
"Evaluation").
"""

import ml_collections

from configs import digits_tokens


def get_config() -> ml_collections.ConfigDict:
  config = digits_tokens.get_config()
  config.data.name = "tfds"
  config.data.tfds_name = "celebahq256"
  config.data.image_size = 256
  config.data.channels = 3
  config.data.num_classes = 0
  config.first_stage.workdir = "workdirs/celebahq_vq"
  config.first_stage.config = "configs/celebahq_vq.py"

  config.model.width = 512
  config.model.depth = 16
  config.model.num_heads = 8
  config.model.dropout = 0.1
  config.model.dtype = "bfloat16"

  config.context.position_fraction = 0.125

  config.train.steps = 300_000
  config.train.batch_size = 256
  config.train.learning_rate = 4e-4
  config.train.warmup_steps = 5000
  config.train.weight_decay = 0.05
  config.train.ema_decay = 0.9999
  config.train.log_every = 100
  config.checkpoint.every_steps = 5000

  config.sample.num_images = 16
  config.sample.steps = 12
  config.eval.num_samples = 10_000
  config.eval.batch_size = 128
  config.eval.metric = "fid"
  return config
