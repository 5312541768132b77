"""The learning-rate schedules against their closed forms."""

import math

import ml_collections
import numpy as np
import pytest

from conprediff_jax import train


def schedule(kind, steps=1000, warmup=100, lr=2e-3):
  return train.learning_rate_schedule(ml_collections.ConfigDict(dict(
      lr_schedule=kind, steps=steps, warmup_steps=warmup, learning_rate=lr)))


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_schedules_match_their_closed_forms(kind):
  f = schedule(kind)
  for step in (0, 37, 100, 101, 550, 999, 1000):
    if step < 100:
      expected = 2e-3 * step / 100
    elif kind == "constant":
      expected = 2e-3
    else:
      expected = 2e-3 * 0.5 * (1 + math.cos(math.pi * (step - 100) / 900))
    np.testing.assert_allclose(float(f(step)), expected, rtol=1e-5, atol=2e-9, err_msg=f"{kind} at {step}")


def test_unknown_schedule_is_refused_by_name():
  with pytest.raises(ValueError, match="lr_schedule must be one of"):
    schedule("linear")
