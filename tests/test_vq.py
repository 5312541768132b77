"""The VQ-VAE tokenizer: shapes, nearest-code assignment, EMA codebook and dead-code restart against NumPy."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conprediff_jax.models.vq import VQVAE, vq_from_config

TINY = dict(image_channels=3, channels=8, channel_mults=(1, 2), num_res_blocks=1, codebook_size=16, code_dim=4,
            num_groups=4)
K, D = TINY["codebook_size"], TINY["code_dim"]


def images(seed=0):
  return jax.random.normal(jax.random.key(seed), (2, 16, 16, 3))


def random_z(seed, shape=(2, 4, 4, D)):
  return jax.random.normal(jax.random.key(seed), shape)


def stats(model):
  return jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat).to_pure_dict())


def nearest_np(z, codebook):
  z, codebook = np.asarray(z, np.float64).reshape(-1, D), np.asarray(codebook, np.float64)
  return np.argmin(((z[:, None, :] - codebook[None]) ** 2).sum(-1), axis=-1)


def ema_reference(before, z, decay, eps=1e-5):
  """The EMA step of VQVAE.quantize(train=True) re-computed in float64, before any dead-code restart."""
  z = np.asarray(z, np.float64).reshape(-1, D)
  tokens = nearest_np(z, before["codebook"])
  onehot = np.eye(K)[tokens]
  cluster_size = decay * before["ema_cluster_size"] + (1 - decay) * onehot.sum(0)
  embed_sum = decay * before["ema_embed_sum"] + (1 - decay) * onehot.T @ z
  usage = decay * before["ema_usage"] + (1 - decay) * onehot.mean(0)
  total = cluster_size.sum()
  codebook = embed_sum / ((cluster_size + eps) / (total + K * eps) * total)[:, None]
  return dict(codebook=codebook, ema_cluster_size=cluster_size, ema_embed_sum=embed_sum, ema_usage=usage)


def test_shapes_and_token_grid():
  model = VQVAE(**TINY, rngs=nnx.Rngs(0))
  assert model.downsample == 2

  @jax.jit  # one program: far quicker to compile than the network op by op
  def forward(x):
    reconstruction, tokens, aux = model(x)
    return model.encode(x), reconstruction, tokens, aux, model.tokenize(x), model.decode_tokens(tokens)

  z_e, reconstruction, tokens, aux, tokenized, decoded = forward(images())
  assert z_e.shape == (2, 8, 8, D) and z_e.dtype == jnp.float32
  assert reconstruction.shape == (2, 16, 16, 3) and reconstruction.dtype == jnp.float32
  assert tokens.shape == (2, 8, 8) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(tokens).reshape(-1), nearest_np(z_e, model.codebook[...]))
  np.testing.assert_array_equal(tokenized, tokens)
  np.testing.assert_allclose(model.embed(tokens), np.asarray(model.codebook[...])[np.asarray(tokens)])
  np.testing.assert_allclose(decoded, reconstruction, atol=1e-5)  # the forward value of z_q is the codes
  assert set(aux) == {"commitment", "loss_commitment", "perplexity", "usage"}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in aux.values())


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
  model = VQVAE(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {jnp.dtype(jnp.float32)}
  reference_model = VQVAE(**TINY, rngs=nnx.Rngs(0))
  # Jitted: compiling the network as one program is several times quicker than op by op.
  z_e, reconstruction, reference = jax.jit(
      lambda x: (model.encode(x), model(x)[0], reference_model.encode(x)))(images())
  assert z_e.dtype == jnp.float32 and reconstruction.dtype == jnp.float32
  assert float(jnp.abs(z_e - reference).max()) < 0.1 * float(jnp.abs(reference).max())  # same weights, bf16


def test_nearest_code_matches_brute_force():
  model = VQVAE(**TINY, rngs=nnx.Rngs(0))
  model.codebook[...] = random_z(1, (K, D))
  z_e = random_z(2, (3, 5, 5, D))
  z_q, tokens, _ = model.quantize(z_e)
  expected = nearest_np(z_e, model.codebook[...])
  np.testing.assert_array_equal(np.asarray(tokens).reshape(-1), expected)
  np.testing.assert_allclose(z_q, np.asarray(model.codebook[...])[expected].reshape(z_e.shape), atol=1e-6)


def test_ema_update_matches_numpy():
  model = VQVAE(**TINY, codebook_decay=0.9, dead_code_threshold=0.0, rngs=nnx.Rngs(0))
  # A non-trivial state: statistics that are not yet at their fixed point, usage far from uniform.
  model.codebook[...] = random_z(1, (K, D))
  model.ema_cluster_size[...] = jax.random.uniform(jax.random.key(3), (K,), minval=0.5, maxval=4.0)
  model.ema_embed_sum[...] = random_z(4, (K, D))
  model.ema_usage[...] = jax.random.uniform(jax.random.key(5), (K,), maxval=2.0 / K)
  before, z_e = stats(model), random_z(2)
  model.quantize(z_e, train=True, key=jax.random.key(6))
  after, expected = stats(model), ema_reference(before, z_e, decay=0.9)
  for name, value in expected.items():
    np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_dead_codes_restart_at_batch_outputs():
  model = VQVAE(**TINY, codebook_decay=0.5, dead_code_threshold=0.1, rngs=nnx.Rngs(0))
  # Half the codes far from every encoder output: never chosen, their usage halves each step until it is
  # below 0.1 / K after four steps.
  far = np.asarray(random_z(1, (K, D))).copy()
  far[K // 2:] += 100.0
  model.codebook[...] = jnp.asarray(far)
  model.ema_embed_sum[...] = jnp.asarray(far)
  held_out = random_z(100, (4, 4, 4, D))
  usage_before = float(model.quantize(held_out)[2]["usage"])
  assert usage_before <= 0.5
  restarted = 0
  for step in range(6):
    before, z_e = stats(model), random_z(10 + step)
    model.quantize(z_e, train=True, key=jax.random.key(step))
    after, expected = stats(model), ema_reference(before, z_e, decay=0.5)
    dead = expected["ema_usage"] * K < 0.1
    restarted += int(dead.sum())
    # Live codes get exactly the EMA update; dead ones become one of this batch's encoder outputs, fresh.
    for name, value in expected.items():
      np.testing.assert_allclose(after[name][~dead], value[~dead], rtol=1e-5, atol=1e-6, err_msg=name)
    batch = np.asarray(z_e).reshape(-1, D)
    for code in after["codebook"][dead]:
      assert np.abs(batch - code).max(-1).min() == 0.0
    assert len({tuple(code) for code in after["codebook"][dead]}) == dead.sum()  # distinct outputs
    np.testing.assert_array_equal(after["ema_cluster_size"][dead], 1.0)
    np.testing.assert_array_equal(after["ema_embed_sum"][dead], after["codebook"][dead])
    np.testing.assert_allclose(after["ema_usage"][dead], 1.0 / K)
  assert restarted >= K // 2
  assert np.abs(stats(model)["codebook"]).max() < 10.0  # no far code left
  assert float(model.quantize(held_out)[2]["usage"]) > usage_before


def test_restarts_draw_outputs_the_codebook_fits_badly():
  model = VQVAE(**TINY, rngs=nnx.Rngs(0))
  fitted = np.asarray(random_z(1, (D,)))
  codebook = fitted + 100.0 + np.asarray(random_z(2, (K, D)))
  codebook[0] = fitted
  model.codebook[...] = jnp.asarray(codebook)
  model.ema_usage[...] = jnp.zeros(K).at[0].set(1.0)  # every code but the fitted one dead after this step
  # Half the batch is the fitted code itself (as a blank background encodes alike everywhere), half is not.
  misfits = np.asarray(random_z(3, (K, D)))
  z_e = np.concatenate([np.tile(fitted, (K, 1)), misfits])[np.asarray(jax.random.permutation(jax.random.key(4), 2 * K))]
  model.quantize(jnp.asarray(z_e.reshape(2, 4, 4, D)), train=True, key=jax.random.key(5))
  restarted = np.asarray(model.codebook[...])[1:]
  assert all(np.abs(misfits - code).max(-1).min() == 0.0 for code in restarted)
  assert len({tuple(code) for code in restarted}) == K - 1


def test_eval_changes_nothing_and_gradients_pass_straight_through():
  model = VQVAE(**TINY, rngs=nnx.Rngs(0))
  before = stats(model)
  model.quantize(random_z(2))  # the only method that writes variables; the others run it with train=False
  jax.tree.map(np.testing.assert_array_equal, stats(model), before)
  grad = jax.grad(lambda z: model.quantize(z)[0].sum())(random_z(2))
  np.testing.assert_array_equal(grad, np.ones(grad.shape))


def test_commitment_perplexity_and_usage_match_numpy():
  model = VQVAE(**TINY, commitment_cost=0.3, rngs=nnx.Rngs(0))
  model.codebook[...] = random_z(1, (K, D))
  z_e = random_z(2, (2, 3, 3, D))
  _, _, aux = model.quantize(z_e)
  z, codebook = np.asarray(z_e, np.float64).reshape(-1, D), np.asarray(model.codebook[...], np.float64)
  tokens = nearest_np(z, codebook)
  probs = np.bincount(tokens, minlength=K) / len(tokens)
  used = probs[probs > 0]
  commitment = ((z - codebook[tokens]) ** 2).mean()
  np.testing.assert_allclose(aux["commitment"], commitment, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_commitment"], 0.3 * commitment, rtol=1e-5)
  np.testing.assert_allclose(aux["perplexity"], np.exp(-(used * np.log(used)).sum()), rtol=1e-5)
  np.testing.assert_allclose(aux["usage"], len(used) / K)
  assert 1 < len(used) < K  # a histogram that tests something


def test_jitted_train_step_returns_updated_statistics():
  """The trainer's pattern: merge pure Param and BatchStat dicts inside a value_and_grad loss, return the stats."""
  model = VQVAE(**TINY, rngs=nnx.Rngs(0))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, batch_stats = params.to_pure_dict(), batch_stats.to_pure_dict()

  @jax.jit
  def step(params, batch_stats, x):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, batch_stats)
      reconstruction, _, aux = model(x, train=True, key=jax.random.key(7))
      loss = jnp.mean((reconstruction - x) ** 2) + aux["loss_commitment"]
      return loss, (nnx.state(model, nnx.BatchStat).to_pure_dict(), model.encode(x))
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (_, (new_stats, z_e)), grads = step(params, batch_stats, images())
  # No code is dead after one step from uniform usage, so the whole update is the EMA step.
  expected = ema_reference(jax.tree.map(np.asarray, batch_stats), z_e, decay=0.99)
  for name, value in expected.items():
    np.testing.assert_allclose(new_stats[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert float(np.abs(new_stats["codebook"] - batch_stats["codebook"]).max()) > 1e-4
  encoder_grad = grads["encoder"]["conv_in"]["kernel"]
  assert np.isfinite(encoder_grad).all() and float(np.abs(encoder_grad).max()) > 0  # straight through to encoder


def test_from_config():
  config = ml_collections.ConfigDict({
      "data": {"channels": 3},
      "model": dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, codebook_size=K, code_dim=D, num_groups=4,
                    commitment_cost=0.5, codebook_decay=0.9, dead_code_threshold=0.1, dtype="bfloat16")})
  model = vq_from_config(config, rngs=nnx.Rngs(0))
  assert model.commitment_cost == 0.5 and model.downsample == 2
  assert model.encoder.conv_in.dtype == jnp.bfloat16


@pytest.mark.slow  # heavy: the fast suite's 10 minutes cannot hold it (CI runs it second)
def test_a_diffusers_vqmodel_is_read_as_a_tokenizer_computes_what_diffusers_does_and_exports_back(tmp_path):
  """model.layout="diffusers": a torch-made VQModel (random weights) in config.first_stage.workdir is the token
  model's tokenizer; its latents, tokens and decoded images equal diffusers' (encode, quantize, decode), and
  --mode=export's VQModel folder holds every tensor bitwise; the vqvae layout is refused by export in one line."""
  import os  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import pytest  # pylint: disable=g-import-not-at-top
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from conprediff_jax import export, families  # pylint: disable=g-import-not-at-top
  from conprediff_jax.export import diffusers_export  # pylint: disable=g-import-not-at-top
  from conprediff_jax.families import first_stage  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  theirs = diffusers.VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                             latent_channels=4, num_vq_embeddings=16, norm_num_groups=4, sample_size=8).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.copy_(0.3 * torch.randn_like(p))
  theirs.save_pretrained(tmp_path / "vq")
  config = tiny_config("masked", str(tmp_path / "vq"))
  families.validate(config, num_devices=1)
  stage = families.get(config).first_stage()
  ours = nnx.merge(stage.graphdef, stage.weights)
  x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
  with torch.no_grad():
    h = theirs.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latents
    quantized, _, (_, _, indices) = theirs.quantize(h)
    decoded = theirs.decode(h).sample.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours.encode(jnp.asarray(x)), h.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
  tokens = ours.tokenize(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(tokens).reshape(-1), indices.numpy().reshape(-1))
  np.testing.assert_allclose(ours.decode_tokens(tokens), decoded, atol=1e-4, rtol=1e-4)
  from conprediff_jax import convert  # pylint: disable=g-import-not-at-top
  command = convert.import_command(str(tmp_path / "vq"), None)  # what a user runs first
  assert "VQModel" in command and "--config=configs/digits_tokens.py" in command
  saved = first_stage.config_of_workdir(str(tmp_path / "vq"))
  export.export(families.get(saved), stage.weights, str(tmp_path / "back"))
  back = diffusers.VQModel.from_pretrained(tmp_path / "back").state_dict()
  original = theirs.state_dict()
  assert back.keys() == original.keys()
  for name, value in back.items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
  plain = tiny_config("autoencoder")
  with pytest.raises(ValueError, match="config.model.layout='diffusers'") as error:
    diffusers_export.vqmodel_config(plain)
  assert "\n" not in str(error.value)

  import functools  # pylint: disable=g-import-not-at-top
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top
  plain.model.layout = "diffusers"  # and the tokenizer family trains in that layout
  exp = train.make_experiment(plain)
  state = jax.jit(functools.partial(train.init_state, exp))(jax.random.key(0))
  batch = {"image": np.random.default_rng(1).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)}
  _, metrics = jax.jit(functools.partial(train.train_step, exp))(state, batch, jax.random.key(1), None)
  assert np.isfinite(float(metrics["loss"]))
