"""A new family is files and one registry line: a toy family, defined here and registered for the test alone, is
validated by its own rules, trained, checkpointed and sampled by the one trainer, and refused in one line where it
has no exporter. Nothing outside this file knows it."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conprediff_jax import export, families, train
from conprediff_jax.config_validation import POSITIVE, ConfigError
from tests.conftest import tiny_config


def _toy_config() -> ml_collections.ConfigDict:
  config = tiny_config()
  config.family = "toy"
  config.context.weight = 0.0
  config.model = ml_collections.ConfigDict({"width": 4, "dtype": "float32"})
  for section in ("diffusion", "first_stage", "inpaint", "text"):
    del config[section]
  config.train.steps = 2
  config.checkpoint.every_steps = 2
  config.sample.update(num_images=4, batch_size=4)
  return config


class ToyFamily(families.Family):
  """Denoises at one noise level: a two-layer convolution predicts the clean image from image + 0.5 noise."""

  CHOICES = {"model.dtype": ("float32",)}
  BOUNDS = {"model.width": POSITIVE}

  @classmethod
  def schema(cls):
    return ml_collections.FrozenConfigDict(_toy_config())

  @classmethod
  def check_config(cls, config, files):
    if config.model.width % 2:
      raise ConfigError("model.width", f"{config.model.width} is odd", "use an even width")

  def build(self, rngs):
    c, w = self.config.data.channels, self.config.model.width
    return nnx.Sequential(nnx.Conv(c, w, (3, 3), rngs=rngs), nnx.silu, nnx.Conv(w, c, (3, 3), rngs=rngs))

  def loss(self, model, first_stage, batch, key):
    import jax  # pylint: disable=g-import-not-at-top
    del first_stage
    x = batch["image"]
    error = jnp.mean(jnp.square(model(x + 0.5 * jax.random.normal(key, x.shape)) - x))
    return families.LossOutput(error, {"loss_point": error})

  def sampler(self, model_def, first_stage_def, num_images):
    import jax  # pylint: disable=g-import-not-at-top
    d = self.config.data

    def sample(weights, first_stage_weights, key, cond):
      del first_stage_weights, cond
      noise = 0.5 * jax.random.normal(key, (num_images, d.image_size, d.image_size, d.channels))
      return jnp.clip(families.base.inference_model(model_def, weights)(noise), -1.0, 1.0)

    return sample


def test_a_toy_family_validates_trains_samples_and_refuses_export(tmp_path, monkeypatch):
  monkeypatch.setitem(families.FAMILIES, "toy", ToyFamily)
  config = _toy_config()
  families.validate(config, num_devices=1)
  for key, value, message in (("model.width", 0, "config.model.width: 0 is not > 0"),
                              ("model.width", 3, "config.model.width: 3 is odd"),
                              ("model.dtype", "bfloat16", "config.model.dtype: 'bfloat16' is not one of")):
    bad = _toy_config()
    bad.model[key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=message):
      families.validate(bad, num_devices=1)

  result = train.train(config, str(tmp_path))
  assert result == {"step": 2, "stopped": None}
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  with np.load(tmp_path / "samples.npz") as f:
    samples = f["images"]
  assert samples.shape == (4, 8, 8, 1) and samples.std() > 0

  with pytest.raises(ValueError, match=r"^--mode=export: the 'toy' family has no exporter") as error:
    export.export(families.get(config), {}, str(tmp_path / "export"))
  assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "export")
