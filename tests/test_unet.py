"""UNet behaviour not covered by the diffusers equivalence test (tests/test_export.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conprediff_jax.conditioning import NULL_LABEL
from conprediff_jax.models.transformer import MaskedTokenTransformer
from conprediff_jax.models.unet import UNet

TINY = dict(image_size=8, in_channels=2, channels=8, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), num_heads=2, num_groups=4)


def inputs():
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
  return x, jnp.array([0, 500, 999])


@nnx.jit
def forward(model, x, t, cond=None, rngs=None):
  """One compiled call instead of hundreds of eagerly dispatched operations (a few times faster here)."""
  return model(x, t, cond, rngs=rngs)


def test_shapes_and_features():
  out, features = forward(UNet(**TINY, rngs=nnx.Rngs(0)), *inputs())
  assert out.shape == (3, 8, 8, 2) and out.dtype == jnp.float32
  assert features.shape == (3, 8, 8, 8)  # the last up block's output, at full resolution


def test_bfloat16_compute_keeps_float32_parameters():
  model = UNet(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  out, features = forward(model, *inputs())
  assert features.dtype == jnp.bfloat16 and out.dtype == jnp.float32
  reference, _ = forward(UNet(**TINY, rngs=nnx.Rngs(0)), *inputs())
  assert float(jnp.abs(out - reference).max()) < 0.1 * float(jnp.abs(reference).max())  # same weights, bf16 rounding


def test_dropout_only_with_an_rng():
  model = UNet(**TINY, dropout=0.5, rngs=nnx.Rngs(0))
  a, _ = forward(model, *inputs())
  b, _ = forward(model, *inputs())
  c, _ = forward(model, *inputs(), None, nnx.Rngs(dropout=1))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3


def test_class_labels_change_the_output_and_none_is_the_null_class():
  model = UNet(**TINY, num_classes=10, rngs=nnx.Rngs(0))
  x, t = inputs()
  with_labels, _ = forward(model, x, t, {"label": jnp.array([1, 2, 3])})
  other, _ = forward(model, x, t, {"label": jnp.array([4, 5, 6])})
  unconditional, _ = forward(model, x, t)
  null, _ = forward(model, x, t, {"label": jnp.full((3,), 10)})
  # conditioning.NULL_LABEL: that example's null class
  dropped, _ = forward(model, x, t, {"label": jnp.array([1, NULL_LABEL, 3])})
  assert float(jnp.abs(with_labels - other).max()) > 1e-4
  np.testing.assert_array_equal(unconditional, null)
  np.testing.assert_array_equal(dropped[1], null[1])
  np.testing.assert_array_equal(dropped[::2], with_labels[::2])


def test_mask_conditioned_unet_reads_only_the_known_pixels_and_nothing_known_when_none_are_given():
  from conprediff_jax.inpainting import mask_conditioning  # pylint: disable=g-import-not-at-top
  model = UNet(**TINY, mask_conditional=True, rngs=nnx.Rngs(0))
  assert model.conv_in.kernel.shape == (3, 3, 2 * 2 + 1, 8)  # x_t, the known pixels, the mask
  x, t = inputs()
  images = jax.random.normal(jax.random.key(1), x.shape)
  known = jnp.arange(8)[None, :, None, None] < jnp.array([2, 4, 8])[:, None, None, None]  # rows kept
  known = jnp.broadcast_to(known, (3, 8, 8, 1))
  out = forward(model, x, t, mask_conditioning.cond(images, known))[0]
  unknown_changed = forward(model, x, t, mask_conditioning.cond(jnp.where(known, images, 7.0), known))[0]
  np.testing.assert_allclose(unknown_changed, out, atol=1e-6)
  known_changed = forward(model, x, t, mask_conditioning.cond(2 * images, known))[0]
  assert float(jnp.abs(known_changed - out).max()) > 1e-4
  nothing = forward(model, x, t, mask_conditioning.cond(images, jnp.zeros_like(known)))[0]
  np.testing.assert_allclose(forward(model, x, t, None)[0], nothing, atol=1e-6)


@pytest.mark.parametrize("name", [pytest.param("unet", marks=pytest.mark.slow), "transformer"])  # unet: -m slow
def test_remat_recomputes_blocks_for_the_same_gradients(name):
  """`model.remat`: the blocks' activations are recomputed in the backward pass (a checkpoint in the gradient's
  program), and the gradients are those of the plain model."""
  if name == "unet":
    make = lambda remat: UNet(**TINY, remat=remat, rngs=nnx.Rngs(0))
    args = inputs()
  else:
    make = lambda remat: MaskedTokenTransformer(vocab_size=7, grid=4, width=16, depth=2, num_heads=2, mlp_ratio=2,
                                                remat=remat, rngs=nnx.Rngs(0))
    args = (jax.random.randint(jax.random.key(0), (2, 4, 4), 0, 8),)
  grads = {}
  for remat in (False, True):
    graphdef, params = nnx.split(make(remat))
    grad = jax.grad(lambda p, graphdef=graphdef: jnp.sum(jnp.square(nnx.merge(graphdef, p)(*args)[0])))
    grads[remat] = jax.jit(grad)(params)
    primitives = {e.primitive.name for e in jax.make_jaxpr(grad)(params).jaxpr.eqns}
    assert bool(primitives & {"checkpoint", "remat2"}) == remat, primitives
  for plain, recomputed in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
    np.testing.assert_allclose(recomputed, plain, rtol=1e-4, atol=1e-5)  # recomputed: other fusions, float32
