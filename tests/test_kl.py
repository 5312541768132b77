"""The KL autoencoder (models/kl.py, families/kl_autoencoder.py): diffusers' AutoencoderKL computes what ours
does on the same weights, both ways, and the family trains and reports its latents' scale."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from conprediff_jax import families  # pylint: disable=g-import-not-at-top,wrong-import-position
from conprediff_jax.export import diffusers_export, diffusers_import  # pylint: disable=wrong-import-position
from tests.conftest import tiny_config  # pylint: disable=wrong-import-position

VARIANTS = {"grey_two_levels": dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, latent_channels=2,
                                    num_groups=4, image_channels=1, size=8),
            "rgb_three_levels_two_blocks": dict(channels=8, channel_mults=(1, 2, 2), num_res_blocks=2,
                                                latent_channels=4, num_groups=4, image_channels=3, size=16)}


def _config(variant):
  v = dict(VARIANTS[variant])
  config = tiny_config("kl_autoencoder")
  config.data.image_size, config.data.channels = v.pop("size"), v.pop("image_channels")
  config.model.update(v)
  return config


@pytest.mark.parametrize("variant", [
    "grey_two_levels", pytest.param("rgb_three_levels_two_blocks", marks=pytest.mark.slow)])  # slow: -m slow
def test_autoencoder_kl_matches_diffusers_both_ways(tmp_path, variant):
  """diffusers -> ours (read_params) and ours -> diffusers (export, loaded by from_pretrained with nothing missing
  or unexpected): encoder mean and log-variance and the decoder agree on random weights and inputs, and the round
  trip returns every tensor bitwise."""
  config = _config(variant)
  family = families.get(config)
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(**diffusers_export.autoencoder_kl_config(config, 0.5)).eval()
  with torch.no_grad():
    for p in vae.parameters():  # off the init: no zero bias or unit norm scale hides a slip
      p.add_(0.1 * torch.randn_like(p))
  vae.save_pretrained(str(tmp_path / "theirs"), safe_serialization=True)
  graphdef, abstract, _ = families.abstract_model(family)
  params = diffusers_import.read_params(str(tmp_path / "theirs"), abstract)
  model = nnx.merge(graphdef, params)

  size, channels = config.data.image_size, config.data.channels
  x = np.random.default_rng(1).uniform(-1, 1, size=(2, size, size, channels)).astype(np.float32)
  mean, logvar = (np.asarray(a) for a in model.encode(jnp.asarray(x)))
  decoded = np.asarray(model.decode(jnp.asarray(mean)))
  with torch.no_grad():
    posterior = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    theirs = vae.decode(posterior.mean).sample.numpy().transpose(0, 2, 3, 1)
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  latent = size // 2 ** (len(config.model.channel_mults) - 1)
  assert mean.shape == (2, latent, latent, config.model.latent_channels)
  for ours, ref, name in ((mean, nhwc(posterior.mean), "mean"), (logvar, nhwc(posterior.logvar), "logvar"),
                          (decoded, theirs, "decoded")):
    error = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"{variant} {name}: relative error {error:.1e}")
    assert error < 1e-5, name

  out = diffusers_export.export_autoencoder(config, params, str(tmp_path / "ours"), scaling_factor=0.5)
  back, info = diffusers.AutoencoderKL.from_pretrained(out, output_loading_info=True, low_cpu_mem_usage=False)
  assert not any(info.values()), info
  assert back.config.scaling_factor == 0.5
  for k, v in vae.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy(), err_msg=k)


@pytest.mark.slow  # `python -m pytest -q -m slow tests`
def test_kl_term_and_scaling_factor_against_numpy():
  """The loss's KL is KL(N(mean, exp(logvar)) || N(0, I)) summed over a latent, recomputed in float64; the
  scaling factor is 1 / the std of the training images' posterior means."""
  config = _config("grey_two_levels")
  config.model.kl_weight = 0.3
  family = families.get(config)
  model = family.build(nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), minval=-1, maxval=1)
  mean, logvar = (np.asarray(a, np.float64) for a in model.encode(images))
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  recon, ours = model(images)  # no key: decoded from the mean
  np.testing.assert_allclose(ours, kl, rtol=1e-5)
  out = family.loss(model, None, {"image": images}, None)
  mse = np.mean((np.asarray(recon, np.float64) - np.asarray(images)) ** 2)
  np.testing.assert_allclose(float(out.loss), mse + 0.3 * kl.mean() / 64, rtol=1e-5)
  weights = nnx.state(model, nnx.Param).to_pure_dict()
  from conprediff_jax.data.digits import load_digits  # pylint: disable=g-import-not-at-top
  real = load_digits(8)[0][:1024]
  want = 1 / np.std(np.asarray(jax.jit(lambda x: model.encode(x)[0])(jnp.asarray(real)), np.float64))
  np.testing.assert_allclose(family.scaling_factor(weights), want, rtol=1e-4)
