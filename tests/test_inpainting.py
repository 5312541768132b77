"""Inpainting: RePaint's walk and its update, masks, token-model decoding from known tokens, and --mode=inpaint's
inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from flax import nnx

from conprediff_jax import families, main
from conprediff_jax.diffusion import gaussian
from conprediff_jax.families.masked_process import _decode_step, maskgit_decode
from conprediff_jax.inpainting import masks, repaint
from conprediff_jax.inpainting import run as inpaint_run
from tests.conftest import make_random_workdir, tiny_config
from tests.test_masked import GRID, VOCAB, context_logits_fn


@pytest.mark.parametrize("steps,jump,resamples", [(10, 1, 1), (10, 3, 2), (50, 10, 10), (7, 7, 4), (6, 2, 3)])
def test_repaint_walk_matches_a_brute_force_count(steps, jump, resamples):
  moves = repaint.schedule(steps, jump, resamples)
  assert moves[0, 0] == 0 and moves[-1, 1] == steps
  np.testing.assert_array_equal(moves[1:, 0], moves[:-1, 1])  # a connected walk
  down = moves[:, 1] == moves[:, 0] + 1
  assert np.all(down | (moves[:, 1] == moves[:, 0] - jump))
  jump_points = [s for s in range(jump, steps, jump)]
  assert down.sum() == steps + (resamples - 1) * jump * len(jump_points)
  for s in jump_points:  # each jump point is left upwards resamples - 1 times, always after arriving from below
    ups = np.flatnonzero(~down & (moves[:, 0] == s))
    assert len(ups) == resamples - 1 and all(moves[i - 1, 1] == s and down[i - 1] for i in ups)


def test_jumping_back_gives_the_forward_marginal_of_the_noisier_level():
  """q(x_s | x0) then diffuse_further to abar_to is q(x_to | x0): mean sqrt(abar_to) x0, variance 1 - abar_to."""
  x0, abar_from, abar_to, n = 0.7, 0.8, 0.3, 200_000
  keys = jax.random.split(jax.random.key(0), 2)
  x_s = jnp.sqrt(abar_from) * x0 + jnp.sqrt(1 - abar_from) * jax.random.normal(keys[0], (n,))
  x_to = np.asarray(repaint.diffuse_further(x_s, abar_from, abar_to, jax.random.normal(keys[1], (n,))), np.float64)
  assert abs(x_to.mean() - np.sqrt(abar_to) * x0) < 5 * np.sqrt((1 - abar_to) / n)
  assert abs(x_to.var() - (1 - abar_to)) < 0.01


def _oracle(diffusion, x0):
  """A denoiser that knows the clean images: its eps is exactly the one x_t implies."""
  abar = jnp.asarray(diffusion.alphas_cumprod, jnp.float32)

  def apply(x, t):
    a = abar[t][:, None, None, None]
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
  return apply


@pytest.mark.parametrize("resamples", [1, 3])
def test_repaint_keeps_known_pixels_exactly_and_an_oracle_fills_the_rest(resamples):
  rng = np.random.default_rng(0)
  diffusion = gaussian.GaussianDiffusion(np.cumprod(1 - gaussian.cosine_betas(1000)), "eps")
  images = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
  truth = jnp.asarray(rng.uniform(-0.9, 0.9, (3, 8, 8, 1)), jnp.float32)  # what the unknown pixels should become
  known = jnp.asarray(masks.generate("box", 3, 8, seed=1)[..., None])
  clean = jnp.where(known, images, truth)
  out = jax.jit(functools.partial(repaint.inpaint, _oracle(diffusion, clean), diffusion, steps=6, jump_length=2,
                                  resamples=resamples))(jax.random.key(0), images, known)
  out = np.asarray(out)
  np.testing.assert_array_equal(out[np.broadcast_to(known, out.shape)],
                                np.asarray(images)[np.broadcast_to(known, out.shape)])
  np.testing.assert_allclose(out, clean, atol=1e-4)


def test_decoding_from_known_tokens_keeps_them_and_schedules_the_unknown_ones():
  logits_fn, key, steps = context_logits_fn(), jax.random.key(3), 4
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, VOCAB, (3, GRID, GRID)).astype(np.int32)
  unknown = rng.random((3, GRID, GRID)) < np.array([0.25, 0.5, 1.0])[:, None, None]
  start = np.where(unknown, VOCAB, tokens)
  out = np.asarray(maskgit_decode(logits_fn, key, batch=3, grid=GRID, mask_id=VOCAB, steps=steps, tokens=start))
  np.testing.assert_array_equal(out[~unknown], tokens[~unknown])
  assert not np.any(out == VOCAB)
  # The first step keeps floor(gamma(1 / steps) * M0) of each image's M0 unknown tokens masked (cosine).
  first = np.asarray(_decode_step(logits_fn, jax.random.fold_in(key, 0), jnp.asarray(start), 0, steps=steps,
                                  mask_id=VOCAB, num_unknown=jnp.asarray(unknown.sum((1, 2)))))
  expected = np.floor(np.float32(np.cos(np.pi / 2 / steps)) * unknown.sum((1, 2)).astype(np.float32))
  np.testing.assert_array_equal((first == VOCAB).sum((1, 2)), np.minimum(expected, unknown.sum((1, 2)) - 1))


def test_mask_generators_are_seeded_and_shaped_as_named():
  for kind in masks.GENERATORS:
    a, b = masks.generate(kind, 6, 16, seed=3), masks.generate(kind, 6, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 16, 16) and a.dtype == bool
    assert np.all(a.any(axis=(1, 2))) and np.all((~a).any(axis=(1, 2)))  # something kept, something to fill
  assert not np.array_equal(masks.generate("strokes", 6, 16, seed=3), masks.generate("strokes", 6, 16, seed=4))
  np.testing.assert_array_equal((~masks.generate("half", 6, 16, seed=0)).sum(axis=(1, 2)), 128)
  assert (~masks.generate("lines", 1, 16, seed=0)[0]).all(axis=1).sum() == 8  # every second row to fill
  np.testing.assert_array_equal(np.argwhere(masks.generate("super_resolve", 1, 16, seed=0)[0]) % 2, 0)
  assert masks.generate("super_resolve", 1, 16, seed=0).sum() == 64
  border = masks.generate("border", 1, 16, seed=0)[0]
  assert border[4:12, 4:12].all() and border.sum() == 64
  holes = (~masks.generate("box", 200, 16, seed=0)).sum(axis=(1, 2))
  assert holes.min() >= 5 * 5 and holes.max() <= 10 * 10  # 30-60% of each side, rounded


def test_mask_files_white_fills_and_mismatches_are_one_line_errors(tmp_path):
  hole = np.zeros((8, 8), np.uint8)
  hole[2:5, 3:7] = 255
  Image.fromarray(hole).save(tmp_path / "a.png")
  known = masks.read_folder(str(tmp_path), 3, 8)
  assert known.shape == (3, 8, 8) and (~known[2]).sum() == 12 and not known[0, 2, 3] and known[0, 0, 0]
  Image.fromarray(hole).save(tmp_path / "b.png")
  with pytest.raises(ValueError, match="2 masks for 3 images"):
    masks.read_folder(str(tmp_path), 3, 8)
  with pytest.raises(ValueError, match=r"is 8x8, its images are 16x16") as e:
    masks.read_folder(str(tmp_path), 2, 16)
  assert "\n" not in str(e.value)
  (tmp_path / "b.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"mask .*b\.png: not a readable image"):
    masks.read_folder(str(tmp_path), 2, 8)


def test_images_of_another_size_are_a_user_error_that_says_what_to_do(tmp_path):
  from conprediff_jax import main  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "photo.jpg")
  config = tiny_config()
  config.inpaint.images = str(tmp_path)
  with pytest.raises(ValueError, match=r"is 20x12, the model's images are 8x8; resize") as e:
    inpaint_run.load_images(config)
  assert main.is_startup_error(e.value) and "\n" not in str(e.value)
  (tmp_path / "photo.jpg").unlink()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:120])  # pixel data cut short
  (tmp_path / "c.png").write_bytes(b"not an image")
  for kept in ("b.png", "c.png"):
    config.inpaint.num_images = 2 if kept == "b.png" else 3
    with pytest.raises(ValueError, match=r"(b|c)\.png: not a readable image .*; remove or replace it") as e:
      inpaint_run.load_images(config)
    assert main.is_startup_error(e.value) and "\n" not in str(e.value)
  config.inpaint.images, config.inpaint.masks = "", str(tmp_path)  # 8x8 and unreadable "masks" for 4 digits
  with pytest.raises(ValueError) as e:
    inpaint_run.load_known(config, 4)
  assert main.is_startup_error(e.value)
  with pytest.raises(ValueError, match="does not inpaint") as e:
    families.get(tiny_config("autoencoder")).inpainter(None, None, 4)
  assert main.is_startup_error(e.value)


@pytest.mark.parametrize("family", ["gaussian", "gaussian_dit", "masked"])
def test_each_familys_inpainter_keeps_known_pixels_and_fills_the_rest(family, tokenizer_workdir):
  config = tiny_config(family, tokenizer_workdir)
  config.sample.steps = 2
  config.inpaint.update(steps=2, jump_length=1, resamples=2)
  fam = families.get(config)
  model_def, params, buffers = families.abstract_model(fam)
  leaves, treedef = jax.tree.flatten(families.union(params, buffers))
  rng = np.random.default_rng(0)
  weights = jax.tree.unflatten(treedef, [jnp.asarray(0.3 * rng.normal(size=l.shape), l.dtype) for l in leaves])
  first_stage = fam.first_stage()
  fs_def, fs_weights = (None, None) if first_stage is None else (first_stage.graphdef, first_stage.weights)
  images = jnp.asarray(inpaint_run.load_images(config)[:4])
  known = jnp.asarray(masks.generate("half", 4, config.data.image_size, seed=0)[..., None])
  out = np.asarray(jax.jit(fam.inpainter(model_def, fs_def, 4))(weights, fs_weights, jax.random.key(0), images,
                                                                 known))
  keep = np.broadcast_to(np.asarray(known), out.shape)
  assert out.shape == images.shape and np.all(np.abs(out) <= 1)
  np.testing.assert_array_equal(out[keep], np.asarray(images)[keep])
  assert np.abs(out[~keep] - np.asarray(images)[~keep]).max() > 0.1


def test_training_masks_are_rectangles_their_complements_or_nothing_known():
  from conprediff_jax.inpainting import mask_conditioning  # pylint: disable=g-import-not-at-top
  known = np.asarray(mask_conditioning.random_known(jax.random.key(0), 4000, 16, none_rate=0.2))[..., 0]
  nothing = ~known.any(axis=(1, 2))
  assert abs(nothing.mean() - 0.2) < 0.03
  holes = ~known[~nothing]
  is_rectangle = lambda m: np.all(m == (m.any(axis=2)[:, :, None] & m.any(axis=1)[:, None, :]), axis=(1, 2))
  rectangle, complement = is_rectangle(holes), is_rectangle(~holes) & ~is_rectangle(holes)
  assert np.all(rectangle | complement)
  rows, cols = holes.any(axis=2), holes.any(axis=1)
  assert abs(complement.mean() - 0.25) < 0.03
  sides = np.concatenate([rows[rectangle].sum(1), cols[rectangle].sum(1)])
  assert sides.min() >= 3 and sides.max() <= 14  # 20-80% of 16 pixels, by pixel centres


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it (CI runs it second)
def test_a_mask_conditioned_latent_model_reads_ldms_condition_trains_and_inpaints(tmp_path):
  """LDM's form: the condition is the scaled latents (posterior means) of the image with its unknown pixels at 0,
  and the mask at the latent grid, known where all of a position's pixels are (recomputed here); one train step,
  then inpainting keeps the known pixels exactly and fills the rest. An unconditioned latent model is refused."""
  from configs import digits_kl  # pylint: disable=g-import-not-at-top
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top
  kl = digits_kl.get_config()
  kl.data.image_size = 8
  kl.model.update(channels=8, channel_mults=(1, 2), num_groups=4)  # 8x8 pixels -> 4x4 latents
  config = tiny_config()
  config.first_stage.update(workdir=make_random_workdir(str(tmp_path), kl), config="")
  config.model.mask_conditional = True
  families.validate(config, num_devices=1)
  exp = train.make_experiment(config)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  known = jnp.asarray(masks.generate("box", 4, 8, seed=1)[..., None])
  stage = nnx.merge(exp.first_stage_def, exp.first_stage.weights)
  cond = exp.family.latent.mask_cond(stage, images, known)
  mean, _ = stage.encode(jnp.where(known, images, 0.0))
  np.testing.assert_allclose(cond["known_image"], mean * exp.family.latent.scaling_factor, rtol=1e-6)
  blocks = np.asarray(known).reshape(4, 4, 2, 4, 2, 1).transpose(0, 1, 3, 5, 2, 4).reshape(4, 4, 4, 1, 4)
  np.testing.assert_array_equal(cond["known_mask"], blocks.all(-1))
  assert 0 < np.asarray(cond["known_mask"]).mean() < 1

  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  batch = {"image": np.asarray(rng.uniform(-1, 1, (8, 8, 8, 1)), np.float32)}
  state, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1),
                                                                    exp.first_stage.weights)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_context"]) > 0
  inpaint = jax.jit(exp.family.inpainter(exp.model_def, exp.first_stage_def, 4))
  out = np.asarray(inpaint(state["ema"], exp.first_stage.weights, jax.random.key(2), images, known))
  keep = np.broadcast_to(np.asarray(known), out.shape)
  np.testing.assert_array_equal(out[keep], np.asarray(images)[keep])
  assert out.shape == images.shape and np.all(np.abs(out) <= 1) and np.abs(out[~keep] - images[~keep]).max() > 0.1
  config.model.mask_conditional = False
  with pytest.raises(ValueError, match="a latent model inpaints when it is mask-conditioned") as error:
    families.get(config).inpainter(None, None, 4)
  assert main.is_startup_error(error.value)
