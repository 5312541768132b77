"""The install check, and the config every test trains: the whole pipeline at the smallest size that runs it.

    python -m conprediff_jax.main --config=configs/smoke.py --workdir=/tmp/smoke

8x8 digits, a one-level 8-channel UNet (no down/upsampling; attention in the middle block), 6 steps with the context
loss on, checkpoints at steps 3 and 6, 8 samples (the default's DPM-Solver++ at 4 steps): it proves the install
works, not the model. About 20-27 s on a 2-core AMD EPYC (Python start-up, imports and compiling the init, train
step and sampler are most of it; the six steps take milliseconds); compiling suffers most on slower CPUs: expect
~1.5 minutes on a 2-core Intel Xeon of ~95 GFLOP/s (`python -m benchmarks.machine`), where the former smoke config
took 2.5.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 8
  config.model.channels = 8
  config.model.channel_mults = (1,)          # one level: a third less to compile than (1, 2)
  config.model.attention_resolutions = ()    # the middle block still has attention
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
  config.inpaint.steps = 4
  return config
