"""The context head is training-only: the sampler receives, traces and imports nothing of it."""

import functools
import subprocess
import sys

import jax

from conprediff_jax import sampling, train
from tests.conftest import REPO


def test_sampler_takes_exactly_the_denoiser_parameters(config):
  on = train.make_experiment(config)
  config_off = config.copy_and_resolve_references()
  config_off.context.weight = 0.0
  off = train.make_experiment(config_off)
  state_on = jax.eval_shape(functools.partial(train.init_state, on), jax.random.key(0))
  state_off = jax.eval_shape(functools.partial(train.init_state, off), jax.random.key(0))
  assert train.param_count(state_on["params"]["context"]) > 0  # the head existed during training...
  assert "context" not in state_off["params"]
  # ...but what sampling reads is the same tree, shapes and count as a model trained without it.
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(state_on["ema"]) == shapes(state_off["ema"])
  assert train.param_count(state_on["ema"]) == train.param_count(state_off["params"]["denoiser"])

  sample_fn = sampling.make_sample_fn(config, on.denoiser_def)
  jaxpr = jax.make_jaxpr(sample_fn)(state_on["ema"], jax.random.key(1), None)
  inputs = [v.aval.shape for v in jaxpr.jaxpr.invars]
  assert inputs == [x.shape for x in jax.tree.leaves(state_on["ema"])] + [()]  # the EMA leaves and a key


def test_inference_modules_never_import_the_context_package():
  code = ("import sys; import conprediff_jax.sampling, conprediff_jax.evaluate, conprediff_jax.export; "
          "bad = sorted(m for m in sys.modules if m.startswith('conprediff_jax.context')); "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
