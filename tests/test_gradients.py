"""The gradient diagnostic (experiments/gradients.py) on a random checkpoint of the smoke config."""

import numpy as np
import pytest

from tests.conftest import make_random_workdir, tiny_config


@pytest.mark.slow  # fits a head and probes gradients twice: `python -m pytest -q -m slow tests`
def test_the_gradient_diagnostic_scales_with_lambda_and_bins_by_timestep(tmp_path):
  """lambda enters the ratio once: doubling it doubles |lambda g_ctx| / |g_point| and leaves the cosine and the
  head's loss as they were (the same head fit, the same draws)."""
  from conprediff_jax.experiments import gradients  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  make_random_workdir(str(tmp_path), config)
  rows = {}
  for weight in (0.1, 0.2):
    config.context.weight = weight
    rows[weight] = gradients.measure(config, str(tmp_path), [0, 500, 1000], batches=2, fit_steps=2)
  low, high = rows[0.1]
  assert (low["t_low"], low["t_high"], high["t_low"]) == (0, 500, 500) and low["alpha_bar"] > high["alpha_bar"]
  for a, b in zip(rows[0.1], rows[0.2]):
    assert -1 <= a["cosine"] <= 1 and a["ratio"] > 0 and a["w2"] > 0 and a["constant"] > 0
    np.testing.assert_allclose(b["ratio"], 2 * a["ratio"], rtol=1e-4)
    np.testing.assert_allclose([b["cosine"], b["w2"]], [a["cosine"], a["w2"]], rtol=1e-4, atol=1e-6)
  assert gradients.table(rows[0.1]).count("\n") == 3


def test_the_gradient_diagnostic_refuses_a_family_without_timesteps(tmp_path, tokenizer_workdir):
  from conprediff_jax.experiments import gradients  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="bins Gaussian timesteps; config.family='masked'"):
    gradients.measure(tiny_config("masked", tokenizer_workdir), str(tmp_path), [0, 1000], 1, 1)
