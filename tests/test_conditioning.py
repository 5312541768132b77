"""The conditioning contract: condition dropout, classifier-free guidance, and both wired into every family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conprediff_jax import conditioning
from conprediff_jax import families
from conprediff_jax import sampling
from conprediff_jax.images import grid
from tests.conftest import tiny_config


def test_drop_nulls_whole_examples_at_the_rate_and_keeps_the_rest():
  labels = jnp.arange(4000, dtype=jnp.int32) % 10
  cond = conditioning.drop({"label": labels}, jax.random.key(0), 0.25)
  dropped = np.asarray(cond["label"]) == conditioning.NULL_LABEL
  assert abs(dropped.mean() - 0.25) < 0.03  # binomial sd ~0.007
  np.testing.assert_array_equal(np.asarray(cond["label"])[~dropped], np.asarray(labels)[~dropped])
  assert conditioning.drop({"label": labels}, jax.random.key(0), 0.0)["label"] is labels
  assert conditioning.drop(None, jax.random.key(0), 0.5) is None


def test_classifier_free_is_one_batched_call_combining_both_outputs():
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(11, 3)), jnp.float32)  # row 10: the null class
  calls = []

  def fn(x, t, cond):  # a toy denoiser, nonlinear in its inputs
    calls.append(x.shape[0])
    rows = jnp.where(cond["label"] < 0, 10, cond["label"])
    return jnp.tanh(x * table[rows][:, None, :] + t[:, None, None])

  x, t = jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32), jnp.arange(4.0)
  cond = {"label": jnp.array([0, 3, 7, 9])}
  c, u = fn(x, t, cond), fn(x, t, conditioning.null_like(cond))
  for scale in (0.0, 1.0, 3.0):
    calls.clear()
    out = conditioning.classifier_free(fn, cond, scale)(x, t)
    np.testing.assert_allclose(out, u + scale * (c - u), rtol=1e-5, atol=1e-6)
    assert calls == ([4] if scale == 1.0 else [8])  # one forward pass, the batch doubled when guiding
  assert conditioning.classifier_free(fn, None, 3.0)  # an unconditional model: no guidance to apply


def test_unconditional_batches_lose_their_labels_and_conditional_ones_drop_some():
  batch = {"image": jnp.zeros((64, 8, 8, 1)), "label": jnp.arange(64, dtype=jnp.int32) % 10}
  plain = families.get(tiny_config())
  assert set(plain.drop_condition(batch, jax.random.key(0))) == {"image"}
  config = tiny_config()
  config.model.class_conditional, config.train.cond_dropout = True, 0.5
  labels = np.asarray(families.get(config).drop_condition(batch, jax.random.key(0))["label"])
  assert 0 < np.sum(labels == conditioning.NULL_LABEL) < 64


def test_grid_puts_one_key_per_row():
  images = (np.arange(7) * 30).astype(np.uint8)[:, None, None, None] * np.ones((7, 1, 1, 1), np.uint8)
  mosaic = grid(images, row_keys=np.array([2, 0, 2, 1, 0, 2, 2]), pad=0)[..., 0]
  np.testing.assert_array_equal(mosaic, [[30, 120, 0, 0], [90, 0, 0, 0], [0, 60, 150, 180]])


@pytest.mark.parametrize("family", ["gaussian", "masked"])
def test_guided_sampler_at_scale_0_is_the_unconditional_model(family, tokenizer_workdir):
  """The family's own sampler, wired through guidance: scale 0 gives what the null class gives unguided, scale 1
  what the labels give, and 3 neither."""
  config = tiny_config(family, tokenizer_workdir)
  config.model.class_conditional = True
  config.sample.steps = 2
  fam = families.get(config)
  model_def, params, buffers = families.abstract_model(fam)
  leaves, treedef = jax.tree.flatten(families.union(params, buffers))
  rng = np.random.default_rng(0)
  weights = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=l.shape), l.dtype) for l in leaves])
  first_stage = fam.first_stage()
  first_stage_def, first_stage_weights = (None, None) if first_stage is None else (first_stage.graphdef,
                                                                                    first_stage.weights)
  labels = {"label": jnp.array([1, 2, 3, 4], jnp.int32)}
  key = jax.random.key(5)

  def run(scale, cond):
    config.sample.guidance_scale = scale
    sampler = jax.jit(families.get(config).sampler(model_def, first_stage_def, 4))
    return np.asarray(sampler(weights, first_stage_weights, key, cond))

  conditional, unconditional = run(1.0, labels), run(1.0, conditioning.null_like(labels))
  # The guided run's doubled batch takes other kernels than the plain one: equal up to float rounding.
  np.testing.assert_allclose(run(0.0, labels), unconditional, atol=1e-3)
  assert np.abs(conditional - unconditional).max() > 3e-2
  assert np.abs(run(3.0, labels) - conditional).max() > 3e-2


@pytest.mark.slow  # three configs trained, sampled and inpainted end to end: `python -m pytest -q -m slow tests`
def test_digits_cond_text_and_inpaint_at_smoke_size_train_sample_and_inpaint(tmp_path):
  """The own settings of configs/digits_cond.py, digits_text.py and digits_inpaint.py (where each differs from the
  default) on the smoke config, together in one model (one compile): two steps, guided samples with their labels
  and prompts in samples.npz, then --mode=inpaint's run on the checkpoint (the mask-conditioned path)."""
  from configs import default, digits_cond, digits_inpaint, digits_text  # pylint: disable=g-import-not-at-top
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top
  from conprediff_jax.inpainting import run as inpaint_run  # pylint: disable=g-import-not-at-top
  base = default.get_config().to_dict()
  config = tiny_config()
  for own in (digits_cond.get_config().to_dict(), digits_text.get_config().to_dict(),
              digits_inpaint.get_config().to_dict()):
    for section, values in own.items():
      if isinstance(values, dict):
        config[section].update({k: v for k, v in values.items() if v != base[section][k]})
  assert config.model.class_conditional and config.model.mask_conditional and config.model.text_conditional
  assert config.sample.guidance_scale != 1.0
  config.text.update(width=16, depth=1, num_heads=2)
  config.train.steps, config.sample.num_images, config.sample.steps = 2, 12, 4
  train.train(config, str(tmp_path))
  saved = np.load(tmp_path / "samples.npz")
  assert saved["images"].shape == (12, 8, 8, 1)
  np.testing.assert_array_equal(saved["labels"], np.arange(12) % 10)
  assert list(saved["prompts"][:3]) == ["a handwritten zero", "the digit 1", "two, written by hand"]
  assert (tmp_path / "samples.png").exists()

  config.inpaint.update(num_images=4, jump_length=2, resamples=2)
  metrics = inpaint_run.inpaint(config, str(tmp_path))
  assert metrics["known_max_abs_error"] == 0.0 and metrics["masked_mse"] > 0
  saved = np.load(tmp_path / "inpaint.npz")
  assert saved["original"].shape == saved["filled"].shape == (4, 8, 8, 1) and saved["known"].shape == (4, 8, 8)
  assert (tmp_path / "inpaint.png").exists() and (tmp_path / "inpaint.json").exists()
  # --mode=eval's protocol: the same images under each generated mask; under the inpaint run's mask, its figures.
  assert config.eval.inpaint_masks == ("box", "half", "lines", "super_resolve")  # digits_inpaint.py's
  protocol = inpaint_run.protocol(config, sampling.load_latest_ema(config, str(tmp_path)))
  assert sorted(protocol) == sorted(f"inpaint_{kind}_{m}" for kind in config.eval.inpaint_masks
                                    for m in ("masked_mse", "known_max_abs_error"))
  assert config.inpaint.mask == "box" and protocol["inpaint_box_masked_mse"] == metrics["masked_mse"]
  assert len({protocol[f"inpaint_{kind}_masked_mse"] for kind in config.eval.inpaint_masks}) == 4
