"""The masked-token family: mask schedules, forward masking, the loss, MaskGIT decoding, the transformer."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conprediff_jax.conditioning import NULL_LABEL
from conprediff_jax.families.masked_process import (MASK_SCHEDULES, _decode_step, mask_tokens, maskgit_decode,
                                                    masked_cross_entropy)
from conprediff_jax.models.transformer import MaskedTokenTransformer, transformer_from_config

# The inverse of each gamma on [0, 1]: P(gamma(r) <= y) = 1 - inverse(y) for r ~ U(0, 1).
INVERSE = {"cosine": lambda y: 2 / np.pi * np.arccos(y), "linear": lambda y: 1 - y, "square": lambda y: np.sqrt(1 - y)}


@pytest.mark.parametrize("name", sorted(MASK_SCHEDULES))
def test_schedule_runs_from_all_masked_to_none(name):
  gamma = MASK_SCHEDULES[name]
  assert float(gamma(0.0)) == 1.0 and float(gamma(1.0)) == 0.0
  values = np.asarray(gamma(jnp.linspace(0, 1, 101)))
  assert np.all(np.diff(values) < 0) and values.min() >= 0 and values.max() <= 1


@pytest.mark.parametrize("name", sorted(MASK_SCHEDULES))
def test_mask_tokens_draws_counts_from_the_schedule_and_positions_uniformly(name):
  b, g, vocab = 4096, 4, 10  # N = 16: ceil vs floor moves the mean fraction by 1 / 16
  n_total = g * g
  tokens = jax.random.randint(jax.random.key(1), (b, g, g), 0, vocab)
  inputs, mask = jax.jit(mask_tokens, static_argnames=("mask_id", "schedule"))(
      jax.random.key(2), tokens, mask_id=vocab, schedule=name)
  tokens, inputs, mask = np.asarray(tokens), np.asarray(inputs), np.asarray(mask)
  assert mask.dtype == bool and mask.shape == (b, g, g)
  np.testing.assert_array_equal(inputs[mask], vocab)
  np.testing.assert_array_equal(inputs[~mask], tokens[~mask])
  counts = mask.sum(axis=(1, 2))
  assert counts.min() >= 1 and counts.max() <= n_total
  # n = ceil(gamma(r) N) gives P(n <= k) = P(gamma(r) <= k / N) = 1 - inverse(k / N) for 0 < k < N.
  k = np.arange(1, n_total)
  empirical = (counts[None, :] <= k[:, None]).mean(axis=1)
  assert np.abs(empirical - (1 - INVERSE[name](k / n_total))).max() < 0.03  # KS 1% critical value is 0.025
  # E[n / N] = mean_k inverse(k / N) over k = 0..N-1, which tends to the integral of gamma (2 / pi for cosine).
  expected_mean = INVERSE[name](np.arange(n_total) / n_total).mean()
  assert abs(counts.mean() / n_total - expected_mean) < 0.015
  # Which positions: uniform, so every position is masked about as often as the average.
  assert np.abs(mask.mean(axis=0) - counts.mean() / n_total).max() < 0.04


def test_masked_cross_entropy_matches_a_numpy_loop_and_ignores_unmasked_logits():
  b, g, vocab = 4, 3, 5
  keys = jax.random.split(jax.random.key(3), 3)
  logits = 2 * jax.random.normal(keys[0], (b, g, g, vocab))
  tokens = jax.random.randint(keys[1], (b, g, g), 0, vocab)
  mask = np.array(jax.random.bernoulli(keys[2], 0.5, (b, g, g)))
  mask[0, 0, 0], mask[1] = True, False  # example 1 has nothing masked: it counts as 0
  loss_fn = jax.jit(masked_cross_entropy)
  loss, accuracy = loss_fn(logits, tokens, jnp.asarray(mask))

  lg, tk = np.asarray(logits, np.float64), np.asarray(tokens)
  losses, accuracies = [], []
  for e in range(b):
    nll, hits, n = 0.0, 0.0, 0
    for i in range(g):
      for j in range(g):
        if mask[e, i, j]:
          row = lg[e, i, j]
          nll -= row[tk[e, i, j]] - np.log(np.exp(row).sum())
          hits += float(np.argmax(row) == tk[e, i, j])
          n += 1
    losses.append(nll / max(n, 1))
    accuracies.append(hits / max(n, 1))
  np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(accuracy, np.mean(accuracies), rtol=1e-6)

  noise = 10 * jax.random.normal(jax.random.key(4), logits.shape)
  unmasked_changed = jnp.where(jnp.asarray(mask)[..., None], logits, logits + noise)
  np.testing.assert_array_equal(loss_fn(unmasked_changed, tokens, jnp.asarray(mask)), (loss, accuracy))
  masked_changed = jnp.where(jnp.asarray(mask)[..., None], logits + noise, logits)
  assert abs(float(loss_fn(masked_changed, tokens, jnp.asarray(mask))[0]) - float(loss)) > 1e-3


GRID, VOCAB = 4, 6  # N = 16 positions; the mask id is VOCAB
N_TOTAL = GRID * GRID


def context_logits_fn():
  """Logits that depend on the position and on the tokens present, so resampling would visibly change tokens."""
  keys = jax.random.split(jax.random.key(5), 2)
  table = 2 * jax.random.normal(keys[0], (GRID, GRID, VOCAB))
  per_token = jax.random.normal(keys[1], (VOCAB + 1, VOCAB))
  return lambda t: table + per_token[t] + per_token[t].mean(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("name,steps,expected", [
    ("cosine", 5, [15, 12, 9, 4, 0]),   # floor(cos(pi / 2 * (i + 1) / 5) * 16)
    ("linear", 3, [10, 5, 0]),          # floor((1 - (i + 1) / 3) * 16)
    ("square", 4, [15, 12, 7, 0]),      # floor((1 - ((i + 1) / 4)^2) * 16)
    ("cosine", 20, None),               # more steps than positions: at least one token per step is what binds
])
def test_decode_steps_follow_the_schedule_and_never_change_decoded_tokens(name, steps, expected):
  logits_fn, key = context_logits_fn(), jax.random.key(6)
  kwargs = dict(steps=steps, mask_id=VOCAB, schedule=name, temperature=1.0, choice_temperature=4.5)
  step_fn = jax.jit(functools.partial(_decode_step, logits_fn, **kwargs))  # one compile for all steps
  tokens = np.full((3, GRID, GRID), VOCAB, np.int32)
  counts = []
  for i in range(steps):
    new = np.asarray(step_fn(jax.random.fold_in(key, i), jnp.asarray(tokens), i))
    was_decoded = tokens != VOCAB
    np.testing.assert_array_equal(new[was_decoded], tokens[was_decoded])
    assert np.all((new >= 0) & (new <= VOCAB))
    now, before = (new == VOCAB).sum(axis=(1, 2)), (tokens == VOCAB).sum(axis=(1, 2))
    gamma = float(MASK_SCHEDULES[name](jnp.float32(i + 1) / steps))
    rule = np.maximum(0, np.minimum(np.floor(np.float32(gamma) * np.float32(N_TOTAL)), before - 1))
    np.testing.assert_array_equal(now, rule)
    assert np.all((now < before) | (before == 0))  # every step with anything masked decodes at least one token
    counts.append(int(now[0]))
    tokens = new
  assert not np.any(tokens == VOCAB)
  if expected is not None:
    assert counts == expected
  else:
    assert counts == list(range(N_TOTAL - 1, -1, -1)) + [0] * (steps - N_TOTAL)  # one token a step, then done

  if steps == 5:  # the jitted fori_loop runs exactly these steps (one case: each compile costs half a second)
    decode = jax.jit(functools.partial(maskgit_decode, logits_fn, batch=3, grid=GRID, **kwargs))
    np.testing.assert_array_equal(decode(key), tokens)


def test_first_step_commits_the_most_confident_positions():
  logits_fn = context_logits_fn()
  tokens = jnp.full((2, GRID, GRID), VOCAB, jnp.int32)
  step_fn = jax.jit(functools.partial(_decode_step, logits_fn, steps=2, mask_id=VOCAB, schedule="linear",
                                      temperature=0.0, choice_temperature=0.0))
  new = np.asarray(step_fn(jax.random.key(7), tokens, 0))
  logits = np.asarray(logits_fn(tokens)).reshape(2, N_TOTAL, VOCAB)
  confidence = np.asarray(jax.nn.log_softmax(logits)).max(axis=-1)
  decoded = new.reshape(2, N_TOTAL) != VOCAB
  assert decoded.sum(axis=1).tolist() == [8, 8]  # 16 - floor((1 - 1 / 2) * 16)
  for e in range(2):
    assert confidence[e][decoded[e]].min() > confidence[e][~decoded[e]].max()
    np.testing.assert_array_equal(new.reshape(2, N_TOTAL)[e][decoded[e]], logits[e].argmax(-1)[decoded[e]])


@pytest.mark.parametrize("temperature", [0.0, 1e-3])
def test_zero_temperature_decodes_the_argmax(temperature):
  # Distinct integer logits per position: gaps of at least 1, so temperature 1e-3 leaves no doubt.
  table = jax.vmap(lambda k: jax.random.permutation(k, VOCAB))(jax.random.split(jax.random.key(8), N_TOTAL))
  table = table.reshape(GRID, GRID, VOCAB).astype(jnp.float32)
  logits_fn = lambda t: jnp.broadcast_to(table, t.shape + (VOCAB,))
  out = maskgit_decode(logits_fn, jax.random.key(9), batch=2, grid=GRID, mask_id=VOCAB, steps=4,
                       temperature=temperature)
  assert out.dtype == jnp.int32 and out.shape == (2, GRID, GRID)
  np.testing.assert_array_equal(out, np.broadcast_to(np.asarray(table).argmax(-1), (2, GRID, GRID)))


TINY = dict(vocab_size=7, grid=4, width=16, depth=2, num_heads=2, mlp_ratio=2)


@functools.cache
def tiny_model(num_classes=0, dtype=jnp.float32, dropout=0.5):
  """Built once per layout (building runs op by op, and compiles each op); dropout is off unless rngs are passed."""
  return MaskedTokenTransformer(**TINY, num_classes=num_classes, dtype=dtype, dropout=dropout, rngs=nnx.Rngs(0))


@nnx.jit
def forward(model, tokens, labels=None, rngs=None):
  """One compiled program per model layout: cheaper to compile than running the model op by op."""
  return model(tokens, None if labels is None else {"label": labels}, rngs=rngs)


def token_inputs():
  return jax.random.randint(jax.random.key(10), (2, 4, 4), 0, 8)  # 7 is the mask id


def test_transformer_shapes_with_and_without_a_class_slot():
  model = tiny_model()
  assert model.mask_id == 7 and model.token_embedding.num_embeddings == 8
  logits, features = forward(model, token_inputs())
  assert logits.shape == (2, 4, 4, 7) and logits.dtype == jnp.float32
  assert features.shape == (2, 4, 4, 16)

  conditional = tiny_model(num_classes=5)
  assert conditional.class_embedding.num_embeddings == 6
  with_labels, features = forward(conditional, token_inputs(), jnp.array([1, 2]))
  other, _ = forward(conditional, token_inputs(), jnp.array([3, 4]))
  unconditional, _ = forward(conditional, token_inputs())
  null, _ = forward(conditional, token_inputs(), jnp.array([5, 5]))
  dropped, _ = forward(conditional, token_inputs(), jnp.array([1, NULL_LABEL]))  # the second example's null class
  assert with_labels.shape == (2, 4, 4, 7) and features.shape == (2, 4, 4, 16)  # the class token is dropped
  assert float(jnp.abs(with_labels - other).max()) > 1e-4
  np.testing.assert_array_equal(unconditional, null)
  np.testing.assert_array_equal(dropped[1], null[1])
  np.testing.assert_array_equal(dropped[0], with_labels[0])


def test_transformer_bfloat16_compute_keeps_float32_parameters():
  model = tiny_model(num_classes=5, dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  logits, features = forward(model, token_inputs())
  assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  reference, _ = forward(tiny_model(num_classes=5), token_inputs())  # the same weights, float32 compute
  assert float(jnp.abs(logits - reference).max()) < 0.1 * float(jnp.abs(reference).max())


def test_transformer_features_are_each_positions_own_without_blocks():
  # Depth 0: nothing mixes positions, so each output must be LN(token + row + column embedding) of its own position,
  # which also checks that the class token is the one dropped.
  model = MaskedTokenTransformer(**{**TINY, "depth": 0}, num_classes=5, rngs=nnx.Rngs(0))
  tokens = np.asarray(token_inputs())
  logits, features = model(jnp.asarray(tokens), {"label": jnp.array([1, 2])})
  x = (np.asarray(model.token_embedding.embedding[...])[tokens] + np.asarray(model.row_embedding[...])[:, None]
       + np.asarray(model.col_embedding[...])[None, :])
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)  # LN at init: scale 1, bias 0
  np.testing.assert_allclose(features, expected, atol=1e-4)
  head = model.head
  np.testing.assert_allclose(logits, expected @ np.asarray(head.kernel[...]) + np.asarray(head.bias[...]), atol=1e-4)


def test_transformer_attention_is_bidirectional():
  tokens = token_inputs()
  changed = tokens.at[:, -1, -1].set((tokens[:, -1, -1] + 1) % 8)  # only the last position
  a, _ = forward(tiny_model(), tokens)
  b, _ = forward(tiny_model(), changed)
  assert float(jnp.abs(a[:, 0, 0] - b[:, 0, 0]).min()) > 1e-5  # the first position sees the last one


def test_transformer_dropout_only_with_an_rng():
  a, _ = forward(tiny_model(), token_inputs())
  b, _ = forward(tiny_model(), token_inputs())
  c, _ = forward(tiny_model(), token_inputs(), rngs=nnx.Rngs(dropout=1))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3


@pytest.mark.parametrize("class_conditional,dtype,dropout", [(False, "float32", 0.5), (True, "bfloat16", 0.0)])
def test_transformer_from_config(class_conditional, dtype, dropout):
  # The layouts of tiny_model(), so that their compiled forward passes are reused.
  config = ml_collections.ConfigDict(dict(
      model=dict(width=16, depth=2, num_heads=2, mlp_ratio=2, dropout=dropout, class_conditional=class_conditional,
                 dtype=dtype),
      data=dict(num_classes=5)))
  model = transformer_from_config(config, vocab_size=7, grid=4, rngs=nnx.Rngs(0))
  assert model.mask_id == 7 and len(model.blocks) == 2 and model.blocks[0].attn.heads == 2
  assert model.blocks[0].mlp_in.out_features == 32 and model.blocks[0].dropout.rate == dropout
  assert (model.class_embedding.num_embeddings == 6) if class_conditional else model.class_embedding is None
  logits, features = forward(model, token_inputs())
  assert logits.shape == (2, 4, 4, 7) and features.dtype == jnp.dtype(dtype)
