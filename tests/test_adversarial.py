"""The first stages' perceptual and adversarial recipe (families/adversarial.py): one backward pass gives each network
the gradient of its own loss, the adaptive weight is the ratio of last-layer gradient norms computed the long way,
the discriminator starts at its step, LPIPS enters as the weights file says, the discriminator trains, checkpoints
and resumes with the run but never reaches inference, and bad settings are one line."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conprediff_jax import config_validation, families, train
from conprediff_jax.evaluation import lpips
from conprediff_jax.families import adversarial
from conprediff_jax.models.discriminator import PatchDiscriminator, output_size
from tests.conftest import random_lpips_weights, tiny_config


KL_WEIGHT = 1e-4  # configs/digits_kl.py's


def _config(family, **loss):
  config = tiny_config(family)
  config.loss.update({"adversarial_weight": 0.5, "disc_layers": 1, "disc_channels": 8, "disc_start": 0, "pixel": "l1",
                      **loss})
  return config


def _parts(config, seed=0):
  """The family, its model and discriminator (random), an image batch, and the LPIPS network if configured."""
  family = families.get(config)
  model = family.build(nnx.Rngs(seed))
  critic = family.auxiliary(nnx.Rngs(seed + 1))
  size = config.data.image_size
  images = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (4, size, size, 1)), jnp.float32)
  stage = family.first_stage()
  perceptual = None if stage is None else nnx.merge(stage.graphdef, stage.weights)
  return family, model, critic, images, perceptual


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it (CI runs it second)
@pytest.mark.parametrize("family_name", ["kl_autoencoder", "autoencoder"])
def test_one_backward_pass_gives_each_network_the_gradient_of_its_own_loss(family_name):
  config = _config(family_name)
  family, model, critic, images, _ = _parts(config)
  model_def, params, buffers = nnx.split(model, nnx.Param, families.BUFFERS)  # the trainer differentiates params
  params, buffers = params.to_pure_dict(), buffers.to_pure_dict()
  merged = lambda params: nnx.merge(model_def, families.union(params, buffers))
  critic_def, critic_w = nnx.split(critic)
  key, step = jax.random.key(5), jnp.asarray(3, jnp.int32)

  def total(params, critic_w):
    out = family.loss(merged(params), None, {"image": images}, key,
                      auxiliary=nnx.merge(critic_def, critic_w), step=step)
    return out.loss, out.metrics

  (_, metrics), (g_model, g_critic) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(params, critic_w)

  # The discriminator's own loss, the reconstruction held fixed.
  reconstruction = jax.lax.stop_gradient(_reconstruction(family_name, merged(params), images,
                                                         key)[0])
  critic_loss = lambda w: adversarial.hinge_discriminator_loss(nnx.merge(critic_def, w)(images),
                                                               nnx.merge(critic_def, w)(reconstruction))
  _assert_trees_close(g_critic, jax.grad(critic_loss)(critic_w))

  # The autoencoder's own loss: its terms with the generator's term at the adaptive weight the step used.
  def autoencoder_loss(params):
    r, own = _reconstruction(family_name, merged(params), images, key)
    generator = -jnp.mean(nnx.merge(critic_def, critic_w)(r))
    return jnp.mean(jnp.abs(r - images)) + metrics["adaptive_weight"] * 0.5 * generator + own

  _assert_trees_close(g_model, jax.grad(autoencoder_loss)(params))
  assert float(metrics["adaptive_weight"]) > 0 and float(metrics["loss_discriminator"]) > 0


def _reconstruction(family_name, model, images, key):
  """(the reconstruction, the family's own KL or commitment term), in one call of the model."""
  if family_name == "kl_autoencoder":
    reconstruction, kl = model(images, key)
    return reconstruction, KL_WEIGHT * jnp.mean(kl) / images[0].size
  reconstruction, _, aux = model(images, train=True, key=key)
  return reconstruction, aux["loss_commitment"]


def _assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-7)
  assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(a))


def test_the_adaptive_weight_is_the_ratio_of_the_last_layers_gradient_norms_computed_through_the_whole_model():
  config = _config("kl_autoencoder")
  family, model, critic, images, _ = _parts(config, seed=1)
  key = jax.random.key(2)
  out = family.loss(model, None, {"image": images}, key, auxiliary=critic, step=jnp.asarray(0))
  model_def, weights = nnx.split(model)

  def through_everything(term):  # the gradient in the last kernel, differentiating the whole decoder's graph
    def of_kernel(kernel):
      w = weights.to_pure_dict()
      w["decoder"]["conv_out"]["kernel"] = kernel
      r = nnx.merge(model_def, w)(images, key)[0]
      return jnp.mean(jnp.abs(r - images)) if term == "nll" else -jnp.mean(critic(r))
    return jnp.linalg.norm(jax.grad(of_kernel)(model.decoder.conv_out.kernel[...]))

  want = through_everything("nll") / (through_everything("generator") + adversarial.ADAPTIVE_EPS)
  assert float(out.metrics["adaptive_weight"]) == pytest.approx(float(want), rel=1e-4)


def test_the_discriminator_counts_from_its_start_step():
  config = _config("kl_autoencoder", disc_start=10)
  family, model, critic, images, _ = _parts(config)
  critic_def, critic_w = nnx.split(critic)

  def loss(critic_w, step):
    out = family.loss(model, None, {"image": images}, jax.random.key(0), auxiliary=nnx.merge(critic_def, critic_w),
                      step=jnp.asarray(step))
    return out.loss, out.metrics

  for step, on in ((9, False), (10, True)):
    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(critic_w, step)
    own = metrics["loss_reconstruction"] + KL_WEIGHT * metrics["kl_per_pixel"]
    assert (float(value) != pytest.approx(float(own))) == on
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads)) == on


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it (CI runs it second)
def test_the_perceptual_term_is_lpips_of_the_reconstruction(tmp_path):
  config = _config("kl_autoencoder", perceptual_weight=0.7,
                   lpips_weights=random_lpips_weights(tmp_path / "l.safetensors"))
  config.data.image_size = 16  # LPIPS-VGG's smallest
  family, model, critic, images, perceptual = _parts(config)
  out = family.loss(model, perceptual, {"image": images}, jax.random.key(0), auxiliary=critic, step=jnp.asarray(0))
  reconstruction = model(images, jax.random.key(0))[0]
  want = float(jnp.mean(lpips.load(tmp_path / "l.safetensors")(images, reconstruction)))
  assert float(out.metrics["lpips"]) == pytest.approx(want, rel=1e-5) and want > 0
  assert family.first_stage().source == config.loss.lpips_weights
  model_def, weights = nnx.split(model)  # and it trains the autoencoder: a gradient reaches the encoder through it
  grads = jax.grad(lambda w: family.loss(nnx.merge(model_def, w), perceptual, {"image": images}, jax.random.key(0),
                                         auxiliary=critic, step=jnp.asarray(0)).metrics["lpips"])(weights)
  encoder = jax.tree.leaves(grads["encoder"])
  assert all(bool(jnp.isfinite(g).all()) for g in encoder) and max(float(jnp.abs(g).max()) for g in encoder) > 0


def test_the_discriminator_trains_with_its_own_optimiser_and_never_reaches_inference():
  config = _config("autoencoder", disc_learning_rate=3e-3)
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  assert set(state["params"]) == {"model", "auxiliary"} and "convs" in state["params"]["auxiliary"]
  assert jax.tree.structure(state["ema"]) == jax.tree.structure(
      families.union(*families.abstract_model(exp.family)[1:]))  # the inference weights alone
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)}
  new, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1), None)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_discriminator"]) > 0
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new["params"]["auxiliary"],
                       state["params"]["auxiliary"])
  # Adam's first step moves every weight by about its learning rate: the discriminator's own, not the model's.
  assert max(jax.tree.leaves(moved)) == pytest.approx(3e-3, rel=0.05)


@pytest.mark.slow  # two short runs: `python -m pytest -q -m slow tests`
def test_a_run_with_the_discriminator_resumes_bitwise(tmp_path):
  from tests.test_reliability import final_state  # pylint: disable=g-import-not-at-top
  config = _config("kl_autoencoder", disc_start=3)
  config.train.steps, config.checkpoint.every_steps = 8, 4
  config.train.lr_schedule = "constant"  # the same rates in a run stopped at 4 steps as in one of 8
  train.train(config, str(tmp_path / "whole"))
  halves = config.copy_and_resolve_references()
  halves.train.steps = 4
  train.train(halves, str(tmp_path / "halves"))
  train.train(config, str(tmp_path / "halves"))
  whole, resumed = final_state(tmp_path / "whole", 8), final_state(tmp_path / "halves", 8)
  assert "auxiliary" in whole["params"]
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, whole, resumed)))


def test_bad_settings_are_one_line(tmp_path):
  config = _config("autoencoder", disc_layers=4)  # an 8x8 image has no patch left after four halvings
  assert output_size(8, 4) < 1
  with pytest.raises(config_validation.ConfigError, match="config.loss.disc_layers: 4 halvings leave no patch"):
    families.validate(config, num_devices=1)
  config = _config("kl_autoencoder", perceptual_weight=1.0)
  with pytest.raises(config_validation.ConfigError, match="config.loss.perceptual_weight: 1.0 on 8x8 images, smaller "
                                                          "than LPIPS-vgg's 16x16"):
    families.validate(config, num_devices=1)
  config.data.image_size = 16
  with pytest.raises(config_validation.ConfigError, match="config.loss.lpips_weights: is empty"):
    families.validate(config, num_devices=1)
  config.loss.lpips_weights = str(tmp_path / "nowhere.safetensors")
  with pytest.raises(config_validation.ConfigError, match="nowhere.safetensors"):
    families.validate(config, num_devices=1)
  assert PatchDiscriminator(image_channels=1, channels=4, layers=1, rngs=nnx.Rngs(0))(
      jnp.zeros((2, 8, 8, 1))).shape == (2, output_size(8, 1), output_size(8, 1), 1)


def test_a_discriminator_gone_nan_skips_the_step_and_loses_nothing():
  config = _config("autoencoder")
  exp = train.make_experiment(config)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  first = state["params"]["auxiliary"]["convs"][0]["kernel"]
  state["params"]["auxiliary"]["convs"][0]["kernel"] = first.at[0, 0, 0, 0].set(jnp.nan)
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)}
  new, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1), None)
  assert int(metrics["nonfinite"]) == 1  # counted; train.max_nonfinite_steps in a row stop the run in one line
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b, equal_nan=True)),
                      {k: new[k] for k in ("params", "ema", "opt_state")},
                      {k: state[k] for k in ("params", "ema", "opt_state")})
  assert all(jax.tree.leaves(same))
