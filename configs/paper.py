"""What the paper-scale configs share: a prepared TFDS dataset (docs/datasets.md) and a UNet sized like the
published model each task builds on, in pixel space or on a KL autoencoder's latents. Not a config itself: run a
task's file, e.g.

    python -m conprediff_jax.main --config=configs/cifar10.py --workdir=workdirs/cifar10

Each task's file (cifar10.py, celebahq_inpaint.py, imagenet_inpaint.py; the latent celebahq.py, ffhq.py,
lsun_church.py, lsun_bedroom.py, coco_t2i.py with their autoencoders in paper_kl.py) states its sizes, its prepare
and train commands, the hardware it was sized for and the paper's figure as the target; none was trained here."""

import ml_collections

from conprediff_jax.models import dit
from configs import default


def pixel_diffusion(*, tfds_name: str, image_size: int, num_classes: int = 0, channels: int, channel_mults,
                    num_res_blocks: int, attention_resolutions, num_heads: int, dropout: float, steps: int,
                    batch_size: int, learning_rate: float, schedule: str, prediction: str = "eps",
                    min_snr_gamma: float = 0.0) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.update(name="tfds", tfds_name=tfds_name, data_dir="~/tensorflow_datasets", image_size=image_size,
                     channels=3, num_classes=max(num_classes, 1))
  config.model.update(channels=channels, channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
                      attention_resolutions=tuple(attention_resolutions), num_heads=num_heads, num_groups=32,
                      dropout=dropout, class_conditional=num_classes > 0, dtype="bfloat16")
  if num_classes:
    config.train.cond_dropout = 0.1  # classifier-free guidance needs the null class trained too
  config.diffusion.update(schedule=schedule, prediction=prediction, min_snr_gamma=min_snr_gamma)
  config.train.update(steps=steps, batch_size=batch_size, learning_rate=learning_rate, lr_schedule="constant",
                      warmup_steps=5000, ema_decay=0.9999, log_every=100)
  config.checkpoint.update(every_steps=10_000, max_to_keep=3)
  config.context.position_fraction = 0.25  # score a quarter of the positions: the head's cost at 256^2
  config.sample.update(num_images=16, batch_size=16)
  config.eval.update(num_samples=50_000, batch_size=256, metric="fid")  # a batch that splits over the chips
  return config


# The latent tasks: (TFDS name, autoencoder downsampling, latent channels); LDM's f4 / f8 first stages, as KL.
LATENT_DATA = {"celebahq": ("celebahq256", 4, 3), "ffhq": ("ffhq256", 4, 3), "lsun_church": ("lsun_church256", 8, 4),
               "lsun_bedroom": ("lsun_bedroom256", 4, 3), "coco": ("coco256", 8, 4),
               "imagenet": ("imagenet256", 8, 4)}


def latent_diffusion(task: str, *, channels: int, channel_mults, attention_resolutions, num_heads: int,
                     steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
  """A UNet on the latents of `workdirs/<task>_kl` (configs/paper_kl.py:<task>), LDM's linear schedule, eps."""
  tfds_name, factor, _ = LATENT_DATA[task]
  config = pixel_diffusion(tfds_name=tfds_name, image_size=256, channels=channels, channel_mults=channel_mults,
                           num_res_blocks=2, attention_resolutions=attention_resolutions, num_heads=num_heads,
                           dropout=0.0, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                           schedule="linear")
  config.first_stage.workdir = f"workdirs/{task}_kl"
  config.first_stage.config = f"configs/paper_kl.py:{task}"
  config.context.position_fraction = 1.0 if factor == 8 else 0.5  # a 32^2 or 64^2 latent grid is cheap to score
  del factor
  return config


def latent_dit(task: str, *, size: str, patch_size: int, num_classes: int, steps: int, batch_size: int,
               learning_rate: float) -> ml_collections.ConfigDict:
  """A DiT of the DiT paper's `size` (models/dit.py SIZES) on the latents of `workdirs/<task>_kl`, trained as that
  paper trained it: linear schedule, eps, a constant rate with no warmup, EMA 0.9999, no weight decay; the context
  head on every token. The UNet's keys stay at the latent UNet's values and are not read."""
  width, depth, heads = dit.SIZES[size]
  config = latent_diffusion(task, channels=128, channel_mults=(1,), attention_resolutions=(), num_heads=heads,
                            steps=steps, batch_size=batch_size, learning_rate=learning_rate)
  config.model.update(name="dit", patch_size=patch_size, width=width, depth=depth, mlp_ratio=4,
                      class_conditional=num_classes > 0)
  config.data.num_classes = max(num_classes, 1)
  if num_classes:
    config.train.cond_dropout = 0.1
  config.train.warmup_steps = 0
  config.context.position_fraction = 1.0
  return config
