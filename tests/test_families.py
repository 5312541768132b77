"""The family conformance test: every registered family, and the Gaussian family with each backbone
(tests/conftest.py tiny_config), trains, shards,
checkpoints and samples through the one trainer.

The 8-device checks run in one subprocess (one JAX start-up with 8 emulated devices, one compile of each init the
checks share; the first stages' in a second, with the slow command); each test reads its own check's result. The
structural checks (what the sampler takes, what the context head adds) trace without compiling, in this process.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import pytest

from conprediff_jax import export, families, sampling, train
from tests.conftest import tiny_config, with_xla_flags

pytestmark = pytest.mark.xdist_group("test_families")  # on one worker: its module fixture runs once

WORKER = os.path.join(os.path.dirname(__file__), "multidevice_worker.py")
FAMILIES = sorted(families.FAMILIES) + ["gaussian_dit"]  # and the Gaussian family's second backbone, the DiT
WITH_CONTEXT = [f for f in FAMILIES if not f.endswith("autoencoder")]  # the families with a context loss
# One step per family, with the context loss where it has one: that step runs everything the plain one does.
STEPS = [(f, 0.1 if f in WITH_CONTEXT else 0.0) for f in FAMILIES]
# The first stages' conformance runs with the slow command (the guard: the README's test command within its time
# on the slower CPU). They are plain convolutional nets with no context loss, sharded by the same rules.
SLOW_FAMILIES = {"autoencoder", "kl_autoencoder"}


def _by_family(*params):
  """pytest params, the first stages' marked slow."""
  return [pytest.param(*p, marks=pytest.mark.slow) if p[0] in SLOW_FAMILIES else pytest.param(*p) for p in params]


def _run_worker(tmp_path_factory, group):
  """Runs every check of the families in `group` in one subprocess; returns `get(check) -> result`, which fails the
  calling test if that check failed."""
  # name -> the worker's argument. The Gaussian family's steps run on a mesh with a model axis as well.
  checks = {f"sharded_step:{f}:{w}": f"{'model_parallel_step' if f.startswith('gaussian') else 'sharded_step'}:{f}:{w}"
            for f, w in STEPS if f in group}
  for family in group:  # sample reads the checkpoint that checkpoint_roundtrip writes
    workdir = tmp_path_factory.mktemp(f"conformance_{family}")
    checks[f"checkpoint_roundtrip:{family}"] = f"checkpoint_roundtrip:{family}:{workdir}"
    checks[f"sample:{family}"] = f"sample:{family}:{workdir}"
  env = dict(os.environ, XLA_FLAGS=with_xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, WORKER, *checks.values()], env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  outputs = {}  # position in argv -> (RESULT or ERROR, payload)
  for line in proc.stdout.splitlines():
    kind, _, rest = line.partition(" ")
    if kind in ("RESULT", "ERROR"):
      index, _, payload = rest.partition(" ")
      outputs[int(index)] = (kind, json.loads(payload))

  def get(check):
    index = list(checks).index(check)
    assert index in outputs, f"worker exited with {proc.returncode} before {check}:\n{proc.stderr[-3000:]}"
    kind, payload = outputs[index]
    assert kind == "RESULT", payload[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return payload

  return get


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  """`get(check)`: the result of a check, from one subprocess per group of families (the fast families', and the
  slow command's first stages'), each started when a test first asks for one of its checks."""
  runs = {}

  def get(check):
    group = tuple(f for f in FAMILIES if (f in SLOW_FAMILIES) == (check.split(":")[1] in SLOW_FAMILIES))
    if group not in runs:
      runs[group] = _run_worker(tmp_path_factory, group)
    return runs[group](check)

  return get


@pytest.mark.parametrize("family,context_weight", _by_family(*STEPS))
def test_train_step_on_8_devices_matches_1_device(worker, family, context_weight):
  """On a (2, 4) data x fsdp mesh; the Gaussian family on a (2, 2, 2) mesh with a model axis (tensor parallelism:
  output features split over 'model'), every array split however small."""
  out = worker(f"sharded_step:{family}:{context_weight}")
  assert out["num_devices"] == 8
  assert any("fsdp" in spec for spec in out["specs"]), out["specs"]  # parameters really were split
  if family == "gaussian":
    assert any("model" in spec and "fsdp" in spec for spec in out["specs"]), out["specs"]
  for (loss1, gnorm1), (loss8, gnorm8) in zip(out["losses1"], out["losses8"]):
    assert abs(loss1 - loss8) <= 1e-5 * abs(loss1), (out["losses1"], out["losses8"])
    assert abs(gnorm1 - gnorm8) <= 1e-4 * abs(gnorm1), (out["losses1"], out["losses8"])
  # Adam turns float rounding in near-zero gradients into sign flips of size ~lr in a few entries, so the
  # parameters are compared as the norm of their difference against the norm of the update itself.
  assert out["param_diff_norm"] <= 0.01 * out["param_update_norm"], out


@pytest.mark.parametrize("family", _by_family(*((f,) for f in FAMILIES)))
def test_checkpoint_restores_onto_other_mesh_shapes(worker, family):
  out = worker(f"checkpoint_roundtrip:{family}")
  assert set(out) == {"(2, 4)", "(8, 1)", "(1, 8)", "(1, 1)"}
  for shape, result in out.items():
    assert result == {"equal": True, "on_target_shardings": True}, (shape, result)


@pytest.mark.parametrize("family", _by_family(*((f,) for f in FAMILIES)))
def test_samples_from_the_checkpoint_on_8_devices(worker, family):
  out = worker(f"sample:{family}")
  config = tiny_config(family)
  size, channels = config.data.image_size, config.data.channels
  assert out["shape"] == [config.sample.num_images, size, size, channels] and out["dtype"] == "uint8", out
  assert out["distinct_values"] > 2 and out["png"], out  # images, not a constant or a failed write


# ------------------------------------------------------------------------------------------------------------------
# Structure, traced without compiling.
# ------------------------------------------------------------------------------------------------------------------
def _config(family, tokenizer_workdir, context_weight):
  config = tiny_config(family, tokenizer_workdir)
  config.context.weight = context_weight
  return config


@pytest.mark.parametrize("family", WITH_CONTEXT)
def test_the_context_head_changes_nothing_that_inference_reads(family, tokenizer_workdir):
  on = train.make_experiment(_config(family, tokenizer_workdir, 0.1))
  off = train.make_experiment(_config(family, tokenizer_workdir, 0.0))
  state_on = jax.eval_shape(functools.partial(train.init_state, on), jax.random.key(0))
  state_off = jax.eval_shape(functools.partial(train.init_state, off), jax.random.key(0))
  assert train.param_count(state_on["params"]["context"]) > 0 and "context" not in state_off["params"]
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(state_on["ema"]) == shapes(state_off["ema"])
  assert train.param_count(state_on["ema"]) == train.param_count(state_off["ema"]) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sampler_takes_the_inference_weights_alone(family, tokenizer_workdir):
  exp = train.make_experiment(_config(family, tokenizer_workdir, 0.1 if family in WITH_CONTEXT else 0.0))
  state = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(0))
  num = exp.config.sample.num_images
  sample_fn = sampling.make_sample_fn(exp.family, exp.model_def, num, first_stage_def=exp.first_stage_def)
  first_stage = None if exp.first_stage is None else exp.first_stage.weights
  cond = exp.family.sample_cond(num)
  jaxpr = jax.make_jaxpr(sample_fn)(state["ema"], first_stage, jax.random.key(1), cond)
  inputs = [v.aval.shape for v in jaxpr.jaxpr.invars]
  expected = [x.shape for x in jax.tree.leaves((state["ema"], first_stage))] + [()]
  assert inputs == expected + [x.shape for x in jax.tree.leaves(cond)]  # no head, no optimiser state
  assert jaxpr.out_avals[0].shape == (num, exp.config.data.image_size, exp.config.data.image_size,
                                      exp.config.data.channels)


def test_export_without_an_exporter_is_a_one_line_user_error(tmp_path, tokenizer_workdir):
  from conprediff_jax import main  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="'masked' family has no exporter") as error:
    export.export(families.get(tiny_config("masked", tokenizer_workdir)), {}, str(tmp_path))
  assert main.is_startup_error(error.value) and "\n" not in str(error.value)
  with pytest.raises(ValueError, match="config.model.layout='diffusers'") as error:  # a tokenizer of our own layout
    export.export(families.get(tiny_config("autoencoder")), {}, str(tmp_path))
  assert main.is_startup_error(error.value) and "\n" not in str(error.value)
  mask_conditional = tiny_config()
  mask_conditional.model.mask_conditional = True
  with pytest.raises(ValueError, match="mask-conditioned UNet") as error:
    export.export(families.get(mask_conditional), {}, str(tmp_path))
  assert main.is_startup_error(error.value) and "\n" not in str(error.value)
  inexpressible = tiny_config()  # diffusers embeds t with block_out_channels[0] sinusoids: mults must start at 1
  inexpressible.model.update(text_conditional=True, channel_mults=(2, 2))
  with pytest.raises(ValueError, match="channel_mults") as error:
    export.export(families.get(inexpressible), {}, str(tmp_path))
  assert main.is_startup_error(error.value) and "\n" not in str(error.value)


@pytest.mark.slow  # `python -m pytest -q -m slow tests`
@pytest.mark.parametrize("family", WITH_CONTEXT)
def test_the_context_study_switches_trace_for_every_family_with_a_context_loss(family, tokenizer_workdir):
  """Each family reports what the context study's switches read (its denoised estimate, its kept signal): a train
  step with all of them on traces, and the head reads the features and the estimate side by side."""
  config = _config(family, tokenizer_workdir, 0.1)
  config.context.update(head_input="features+denoised", targets="denoised", timestep_weighting="snr",
                        weight_warmup_steps=10)
  exp = train.make_experiment(config)
  state = jax.eval_shape(functools.partial(train.init_state, exp), jax.random.key(0))
  spec = exp.family.feature_spec()
  assert state["params"]["context"]["moments"]["kernel"].shape[0] == spec.features + spec.targets
  batch = {"image": jax.ShapeDtypeStruct((config.train.batch_size, config.data.image_size, config.data.image_size,
                                          config.data.channels), jax.numpy.float32)}
  first_stage = None if exp.first_stage is None else exp.first_stage.weights
  _, metrics = jax.eval_shape(functools.partial(train.train_step, exp), state, batch, jax.random.key(1), first_stage)
  assert metrics["loss_context"].shape == ()


@pytest.mark.slow  # `python -m pytest -q -m slow tests`
def test_the_token_models_denoised_estimate_is_its_expected_code(tokenizer_workdir):
  """Masked positions: the codebook vectors averaged under the predicted distribution; kept ones: their own code.
  Recomputed in NumPy from the same logits."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from conprediff_jax.families import masked_process  # pylint: disable=g-import-not-at-top
  family = families.get(_config("masked", tokenizer_workdir, 0.1))
  stage = family.first_stage()
  tokenizer = nnx.merge(stage.graphdef, stage.weights)
  model = family.build(nnx.Rngs(0))
  size = family.config.data.image_size
  images = jax.random.uniform(jax.random.key(2), (4, size, size, 1), minval=-1, maxval=1)
  key = jax.random.key(3)
  out = family.loss(model, tokenizer, {"image": images}, key)
  tokens = tokenizer.tokenize(images)
  inputs, mask = masked_process.mask_tokens(jax.random.split(key)[0], tokens, model.mask_id,
                                            family.config.masking.schedule)
  logits = np.asarray(model(inputs, None)[0], np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  codebook = np.asarray(tokenizer.codebook[...], np.float64)
  expected = np.where(np.asarray(mask)[..., None], probs @ codebook, codebook[np.asarray(tokens)])
  np.testing.assert_allclose(out.denoised, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.signal, 1 - np.asarray(mask).mean(axis=(1, 2)), rtol=1e-6)
  assert len(np.unique(np.asarray(out.signal))) > 1  # masks of several sizes were drawn
