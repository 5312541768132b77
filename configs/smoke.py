"""A seconds-long run that exercises every part of the pipeline (install check; also the tests' config).

    python -m conprediff_jax.main --config=configs/smoke.py --workdir=/tmp/smoke

8x8 digits, an 8-channel UNet, 6 steps with the context loss on: it proves the install works, not the model.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 8
  config.model.channels = 8
  config.model.channel_mults = (1, 2)
  config.model.attention_resolutions = (4,)
  config.model.num_heads = 2
  config.model.num_groups = 4
  config.context.hidden_dim = 16
  config.context.strides = (1, 2)
  config.train.steps = 6
  config.train.batch_size = 8
  config.train.warmup_steps = 2
  config.train.log_every = 2
  config.checkpoint.every_steps = 3
  config.sample.num_images = 8
  config.sample.steps = 4
  return config
