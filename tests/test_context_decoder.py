"""ContextDecoder and context_loss: shapes, purity, masking, and that the decoder learns."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conprediff_jax.context import ContextDecoder
from conprediff_jax.context import context_loss
from conprediff_jax.context import wasserstein2
from conprediff_jax.context.neighbourhoods import OFFSETS

B, H, W, F, C = 2, 5, 6, 8, 3
STRIDES = (1, 2)


def make_decoder(**kwargs) -> ContextDecoder:
  return ContextDecoder(F, C, num_strides=len(STRIDES), hidden_dim=16, rngs=nnx.Rngs(0), **kwargs)


def random_inputs(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  features = jax.random.normal(k1, (B, H, W, F))
  targets = jax.random.uniform(k2, (B, H, W, C), minval=-1.0, maxval=1.0)
  return features, targets


def test_output_shape_and_explicit_key():
  decoder = make_decoder()
  features, _ = random_inputs()
  out = decoder(features, jax.random.key(1))
  assert out.shape == (B, H, W, len(STRIDES), 8, C)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(decoder(features, jax.random.key(1))))
  assert not np.allclose(np.asarray(out), np.asarray(decoder(features, jax.random.key(2))))
  # Samples differ from one another (sigma > 0), strides use different MLPs.
  assert not np.allclose(np.asarray(out[..., 0, :]), np.asarray(out[..., 1, :]))
  assert not np.allclose(np.asarray(out[..., 0, :, :]), np.asarray(out[..., 1, :, :]))
  other = make_decoder(num_samples=5, latent_dim=4)
  shape = jax.eval_shape(lambda h, k: other(h, k), features, jax.random.key(0)).shape
  assert shape == (B, H, W, len(STRIDES), 5, C)


def test_the_strides_mlps_compute_the_same_as_matmuls_and_as_einsums():
  """The CPU's form of the decoder (plain matrix products) and every other backend's (einsums over the strides),
  and their gradients, agree: each backend compiles only its own (jax.lax.platform_dependent)."""
  decoder = make_decoder(num_samples=5, latent_dim=4)
  z = jax.random.normal(jax.random.key(3), (5, 4, B, H * W))
  weights = jax.random.normal(jax.random.key(4), (5, C, len(STRIDES), B, H * W))
  graph, params = nnx.split(decoder)
  value = lambda form: jax.value_and_grad(lambda p, z: jnp.sum(weights * getattr(nnx.merge(graph, p), form)(z)),
                                          argnums=(0, 1))(params, z)
  matmuls, einsums = value("_mlps_as_matmuls"), value("_mlps_as_einsums")
  for got, want in zip(jax.tree.leaves(matmuls), jax.tree.leaves(einsums)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_state_is_parameters_only():
  decoder = make_decoder()
  _, params, rest = nnx.split(decoder, nnx.Param, ...)
  assert jax.tree.leaves(rest) == []
  assert decoder.latent_dim == F  # default
  # A pure function of (params, inputs, key) under jit.
  graphdef, params = nnx.split(decoder, nnx.Param)
  features, _ = random_inputs()
  pure = jax.jit(lambda p, h, k: nnx.merge(graphdef, p)(h, k))
  np.testing.assert_allclose(np.asarray(pure(params, features, jax.random.key(0))),
                             np.asarray(decoder(features, jax.random.key(0))), rtol=1e-5, atol=1e-6)


def test_log_sigma_is_clipped():
  decoder = make_decoder()
  features, _ = random_inputs()
  out = decoder(features * 1e4, jax.random.key(0))
  assert np.all(np.isfinite(np.asarray(out)))


def test_loss_is_float32_scalar_and_targets_are_constants():
  decoder = make_decoder()
  features, targets = random_inputs()
  loss = context_loss(decoder, features.astype(jnp.bfloat16), targets.astype(jnp.bfloat16),
                      jax.random.key(0), strides=STRIDES)
  assert loss.shape == () and loss.dtype == jnp.float32 and float(loss) > 0
  grad = jax.grad(lambda t: context_loss(decoder, features, t, jax.random.key(0), strides=STRIDES))(targets)
  assert not np.any(np.asarray(grad))


def brute_force_loss(decoder, features, targets, key, strides, solver):
  """Python loops: each position's true neighbours listed explicitly, no masks at all; a position with none at a
  stride has no term."""
  sample_key, _ = jax.random.split(key)
  predictions = np.asarray(decoder(features, sample_key), np.float64)
  targets = np.asarray(targets, np.float64)
  total, count = 0.0, 0
  for b in range(B):
    for r in range(H):
      for c in range(W):
        for k, s in enumerate(strides):
          inside = [targets[b, r + s * dy, c + s * dx] for dy, dx in OFFSETS
                    if 0 <= r + s * dy < H and 0 <= c + s * dx < W]
          if not inside:
            continue
          total += float(wasserstein2(predictions[b, r, c, k], np.stack(inside), solver=solver))
          count += 1
  return total / count


@pytest.mark.parametrize("solver", ["sorted", "exact"])
def test_loss_matches_brute_force_without_masks(solver):
  decoder = make_decoder()
  features, targets = random_inputs(1)
  key = jax.random.key(3)
  loss = float(context_loss(decoder, features, targets, key, strides=STRIDES, solver=solver))
  reference = brute_force_loss(decoder, features, targets, key, STRIDES, solver)
  assert loss == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("solver", ["sorted", "exact"])
def test_positions_without_neighbours_at_a_stride_are_left_out(solver):
  """Stride 3 on the 5x6 grid: positions (2, 2) and (2, 3) have no neighbour inside at that stride."""
  decoder = make_decoder()
  features, targets = random_inputs(4)
  key = jax.random.key(5)
  loss_fn = lambda h: context_loss(decoder, h, targets, key, strides=(1, 3), solver=solver)
  loss = float(loss_fn(features))
  assert loss == pytest.approx(brute_force_loss(decoder, features, targets, key, (1, 3), solver), rel=1e-4)
  if solver == "sorted":
    assert np.all(np.isfinite(np.asarray(jax.grad(loss_fn)(features))))


@pytest.mark.parametrize("solver", ["sorted", "sinkhorn", "exact"])
def test_masked_neighbours_do_not_influence(solver):
  rng = np.random.default_rng(0)
  predictions = rng.uniform(-1, 1, (4, 8, C)).astype(np.float32)
  neighbours = rng.uniform(-1, 1, (4, 8, C)).astype(np.float32)
  mask = np.ones((4, 8), bool)
  mask[0, :5] = mask[1, ::2] = mask[2, 7] = False
  perturbed = np.where(mask[..., None], neighbours, neighbours + rng.normal(0, 5, neighbours.shape))
  a = wasserstein2(predictions, neighbours, y_weights=mask, solver=solver)
  b = wasserstein2(predictions, perturbed.astype(np.float32), y_weights=mask, solver=solver)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_mismatched_configuration_raises():
  decoder = make_decoder()
  features, targets = random_inputs()
  with pytest.raises(ValueError, match="strides"):
    context_loss(decoder, features, targets, jax.random.key(0), strides=(1, 2, 3))
  with pytest.raises(ValueError, match="channels"):
    context_loss(decoder, features, targets[..., :1], jax.random.key(0), strides=STRIDES)
  with pytest.raises(ValueError):
    context_loss(decoder, features, targets, jax.random.key(0), strides=(1, 5))  # 5 >= H


@pytest.mark.parametrize("solver,options", [
    ("sorted", {"num_projections": 4}),  # sliced: also checks that the loss hands a key to the solver
    ("sinkhorn", {"epsilon": 0.05, "iterations": 20}),
])
def test_decoder_learns_a_fixed_target(solver, options):
  decoder = make_decoder()
  features, targets = random_inputs(2)
  graphdef, params = nnx.split(decoder, nnx.Param)
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, key):
    def loss_fn(p):
      return context_loss(nnx.merge(graphdef, p), features, targets, key, strides=STRIDES, solver=solver,
                          **options)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(30):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_position_fraction_is_an_unbiased_estimate_of_the_full_loss():
  """Averaged over draws (of the decoder noise and of the positions), a subsample (one position of every set of 4)
  scores the same mean; a fraction that is not 1/g, or a grid its sets do not tile, is one line."""
  decoder = ContextDecoder(6, 2, num_strides=2, num_samples=4, hidden_dim=8, rngs=nnx.Rngs(0))
  features = jax.random.normal(jax.random.key(1), (2, 4, 6, 6))
  targets = jax.random.uniform(jax.random.key(2), (2, 4, 6, 2), minval=-1, maxval=1)
  loss = lambda fraction: jax.jit(jax.vmap(lambda k: context_loss(decoder, features, targets, k, strides=(1, 2),
                                                                  position_fraction=fraction)))
  keys = jax.random.split(jax.random.key(4), 400)
  full, quarter = loss(1.0)(keys), loss(0.25)(keys)
  assert float(jnp.std(quarter)) > 1.5 * float(jnp.std(full))  # it really is a different, noisier estimate
  stderr = float(jnp.std(quarter)) / 20.0
  assert abs(float(jnp.mean(quarter)) - float(jnp.mean(full))) < 4 * stderr
  for fraction in (0.0, 0.3, 1 / 16):  # 1/16: sets of 16 do not tile 24 positions
    with pytest.raises(ValueError, match="position_fraction") as error:
      context_loss(decoder, features, targets, keys[0], strides=(1, 2), position_fraction=fraction)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------------------------
# The study's switches (context/objective.py): example weights, what the head reads and predicts, lambda's ramp.
# ------------------------------------------------------------------------------------------------------------------
def test_example_weights_scale_each_examples_terms():
  """The loss is linear in the example weights: one-hot weights split the plain loss into per-example shares that
  add up to it, and any weights give the weighted sum of those shares. Weights of 1 change nothing, bitwise, with
  or without a position draw."""
  decoder = make_decoder()
  features, targets = random_inputs(3)
  key = jax.random.key(4)
  loss = lambda fraction=1.0, w=None: float(context_loss(decoder, features, targets, key, strides=STRIDES,
                                                         solver="exact", position_fraction=fraction,
                                                         example_weights=w))
  shares = [loss(w=jnp.eye(B)[b]) for b in range(B)]
  assert min(shares) > 0
  np.testing.assert_allclose(sum(shares), loss(), rtol=1e-5)
  np.testing.assert_allclose(loss(w=jnp.array([0.25, 1.5])), 0.25 * shares[0] + 1.5 * shares[1], rtol=1e-5)
  for fraction in (1.0, 0.5):
    assert loss(fraction, jnp.ones(B)) == loss(fraction)
  with pytest.raises(ValueError, match="example_weights must be"):
    loss(w=jnp.ones(B + 1))


def _context_config(**overrides):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.context.update(strides=STRIDES, hidden_dim=16, latent_dim=0, position_fraction=1.0, **overrides)
  return config


def test_timestep_weightings_against_their_formulas():
  from conprediff_jax.context import objective  # pylint: disable=g-import-not-at-top
  s = np.array([0.02, 0.3, 0.5, 0.7, 0.999])
  c = _context_config(snr_gamma=2.0, min_signal=0.6).context
  assert objective.example_weights(c, jnp.asarray(s)) is None  # "none"
  expected = {"alpha_bar": s, "snr": np.minimum(s / (1 - s), 2.0) / 2.0, "cutoff": (s >= 0.6).astype(float)}
  for kind, want in expected.items():
    c.timestep_weighting = kind
    np.testing.assert_allclose(objective.example_weights(c, jnp.asarray(s, jnp.float32)), want, rtol=1e-5)
  c.weight, c.weight_warmup_steps = 0.2, 100
  np.testing.assert_allclose([float(objective.weight_at(c, jnp.asarray(n))) for n in (0, 25, 100, 400)],
                             [0.0, 0.05, 0.2, 0.2], rtol=1e-6)


def test_the_head_reads_and_predicts_what_the_config_says():
  """head_input="features+denoised": the head reads [features, x0-hat] and its gradient reaches x0-hat;
  targets="denoised": the neighbourhoods scored are x0-hat's; the term is lambda times the loss."""
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from conprediff_jax.context import objective  # pylint: disable=g-import-not-at-top
  features, clean = random_inputs(5)
  denoised = clean + 0.3 * jax.random.normal(jax.random.key(6), clean.shape)
  spec = SimpleNamespace(features=F, targets=C)
  key = jax.random.key(7)
  for head_input, targets in (("features", "clean"), ("features+denoised", "denoised")):
    config = _context_config(head_input=head_input, targets=targets, weight=0.3)
    head = objective.build_head(config, spec, jax.random.key(0))
    term = objective.make_term(config)

    def value(d, head=head, term=term):
      out = SimpleNamespace(features=features, targets=clean, denoised=d, signal=None)
      return term(head, out, key, jnp.asarray(0))

    weighted, loss = value(denoised)
    np.testing.assert_allclose(float(weighted), 0.3 * float(loss), rtol=1e-6)
    inputs = features if head_input == "features" else jnp.concatenate([features, denoised], -1)
    want = context_loss(head, inputs, clean if targets == "clean" else denoised, key, strides=STRIDES)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    grad = jax.grad(lambda d: value(d)[0])(denoised)  # pylint: disable=cell-var-from-loop
    assert (float(jnp.abs(grad).max()) > 0) == (head_input == "features+denoised")


def test_position_draws_stay_on_the_chip_that_holds_the_example():
  """On a batch split over a TPU slice's chips, the subsampled loss's gradient compiles with no collective but the
  sums of the head's gradients and of the loss: each example's positions are drawn where it lies. A draw over all
  B*H*W positions summed every chip's picks onto every chip (here 14,336 values; for the head of cifar10.py's size
  on a v4-8, 58 GB of memory traffic per chip and step by the compiler's count, against 1.7 GB once drawn per
  example)."""
  from conprediff_jax import hardware, parallel  # pylint: disable=g-import-not-at-top
  devices = hardware.abstract_devices(hardware.parse_topology("v5e-4"))
  mesh = parallel.make_mesh((-1, 1), ("data", "fsdp"), devices=devices)
  decoder = ContextDecoder(8, 3, num_strides=2, num_samples=4, hidden_dim=8, rngs=nnx.Rngs(0))
  graph, params = nnx.split(decoder)

  def gradients(params, features, targets, key):
    loss = lambda p, f: context_loss(nnx.merge(graph, p), f, targets, key, strides=(1, 2), position_fraction=0.25)
    return jax.grad(loss, argnums=(0, 1))(params, features)

  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  whole = parallel.replicated(mesh)
  abstract = lambda shape, sharding: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
  with jax.set_mesh(mesh):  # as the trainer runs: the decoder and the solver are then TPU kernels (head_kernel.py)
    hlo = jax.jit(gradients).lower(jax.tree.map(lambda x: abstract(x.shape, whole), params),
                                   abstract((16, 8, 8, 8), split), abstract((16, 8, 8, 3), split),
                                   jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=whole)).compile().as_text()
  # The head's backward kernel alone: it recomputes the forward, whose value nothing here asks for.
  assert hlo.count('custom_call_target="tpu_custom_call"') == 1
  summed = [line.split(" all-reduce")[0] for line in hlo.splitlines() if re.search(r" all-reduce(-start)?\(", line)]
  values = sum(int(np.prod([int(d) for d in dims.split(",") if d]))
               for line in summed for dims in re.findall(r"\w+\[([\d,]*)\]", line))
  head = sum(x.size for x in jax.tree.leaves(params))
  assert head <= values < 2 * head, summed
  assert not re.search("all-gather|all-to-all|collective-permute", hlo)


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it
def test_tpu_head_kernels_match_the_decoder_and_the_sorted_solver(targets=3, positions=130):
  """The head's kernels (head_kernel.py, run by the Pallas interpreter: the code a TPU compiles) against what they
  replace on a TPU, the decoder's samples scored by XLA's sorted solver: distances, and gradients in the first layer's
  output and in every decoder weight, with masked neighbours, log sigmas beyond the clip, and positions that are not a
  multiple of the kernels' 128-wide blocks (padded)."""
  from conprediff_jax.context import head_kernel, sorted_solver  # pylint: disable=g-import-not-at-top
  strides, q, n, latent = 2, 4, len(OFFSETS), 8
  decoder = ContextDecoder(F, targets, num_strides=strides, num_samples=q, latent_dim=latent, hidden_dim=16,
                           rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  moments = jnp.asarray(rng.normal(size=(2 * latent, positions)), jnp.float32).at[latent:latent + 2, :9].set(4.0)
  noise = decoder.noise(jax.random.key(2), (positions,))
  values = jnp.asarray(rng.normal(size=(n, strides, targets, positions)), jnp.float32)
  mask = rng.uniform(size=(n, strides, positions)) < 0.6
  mask[0] = True
  mask = jnp.asarray(mask)
  cotangent = jnp.asarray(rng.normal(size=(strides, positions)), jnp.float32)
  graph, params = nnx.split(decoder)

  def on_xla(params, moments):
    x = nnx.merge(graph, params).sample_points_major(moments, jax.random.key(2))  # [Q, C, S, M], the same noise
    sets = lambda v: v.reshape(v.shape[0], targets, -1)
    distances = sorted_solver.solve_points_major(sets(x), sets(jnp.swapaxes(values, 1, 2)),
                                                 mask.reshape(n, 1, -1)).reshape(strides, positions)
    return jnp.sum(cotangent * distances)

  def on_tpu(params, moments):
    return jnp.sum(cotangent * head_kernel.distances(nnx.merge(graph, params), moments, noise, values, mask,
                                                     interpret=True))

  want, want_grads = jax.value_and_grad(on_xla, argnums=(0, 1))(params, moments)
  got, got_grads = jax.value_and_grad(on_tpu, argnums=(0, 1))(params, moments)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  for got_grad, want_grad in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-4,
                               atol=1e-5 * float(np.abs(want_grad).max()))
  assert float(jnp.abs(got_grads[1][latent:latent + 2, :9]).max()) == 0.0  # clipped: no gradient


def test_the_loss_on_a_tpus_path_is_the_loss_on_xlas(monkeypatch):
  """context_loss with the head's kernels (what a TPU under a mesh runs, here interpreted on a one-device mesh)
  gives the value and gradients of its XLA path: the kernels' operands are laid out and their distances read back
  as the XLA path's sets."""
  import functools  # pylint: disable=g-import-not-at-top
  from conprediff_jax.context import head_kernel  # pylint: disable=g-import-not-at-top
  features, targets = jax.random.normal(jax.random.key(3), (3, 6, 6, F)), jax.random.normal(jax.random.key(4),
                                                                                            (3, 6, 6, C))
  graph, params = nnx.split(make_decoder())
  loss = lambda p, f: context_loss(nnx.merge(graph, p), f, targets, jax.random.key(5), strides=STRIDES,
                                   position_fraction=0.5)
  gradients = lambda: jax.value_and_grad(loss, argnums=(0, 1))(params, features)
  want = gradients()
  monkeypatch.setattr(jax.lax, "platform_dependent", lambda *args, tpu, default: tpu(*args))
  calls, interpreted = [], functools.partial(head_kernel.distances, interpret=True)
  monkeypatch.setattr(head_kernel, "distances", lambda *args: calls.append(args) or interpreted(*args))
  with jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))):
    got = gradients()
  assert calls
  for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(got_leaf), np.asarray(want_leaf), rtol=1e-4,
                               atol=1e-5 * float(np.abs(want_leaf).max()))
