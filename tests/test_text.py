"""Text conditioning: byte-level prompts, the text encoders, cross-attention in the UNet, the token model's text
slot, captions and precomputed embeddings in the data, and prompts at sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conprediff_jax import conditioning, main
from conprediff_jax.data import digits
from conprediff_jax.models import attention
from conprediff_jax.models.dit import DiT
from conprediff_jax.models.text_encoder import TextEncoder
from conprediff_jax.models.transformer import MaskedTokenTransformer
from conprediff_jax.models.unet import UNet
from tests.conftest import REPO, tiny_config

ENCODER = dict(max_length=12, width=16, depth=1, num_heads=2, embedding_dim=6)


def test_prompts_round_trip_as_bytes_cut_at_the_length():
  prompts = ["the digit 7", "", "épée", "a much longer prompt than twelve bytes"]
  tokens = conditioning.encode_text(prompts, 12)
  assert tokens.shape == (4, 12) and tokens.dtype == np.int32
  assert list(tokens[0, :3]) == [ord("t") + 1, ord("h") + 1, ord("e") + 1] and tokens[0, 11] == conditioning.PAD
  assert not tokens[1].any()  # the empty prompt is all padding: the null prompt
  assert conditioning.decode_text(tokens) == ["the digit 7", "", "épée", "a much longe"]
  assert tokens.max() <= 256 < conditioning.BOS < conditioning.TEXT_VOCAB


def test_digit_captions_name_their_label_and_are_read_back():
  labels = np.arange(1797) % 10
  captions = digits.captions(labels)
  assert captions == digits.captions(labels) and captions != digits.captions(labels, seed=1)  # seeded
  assert [digits.caption_class(c) for c in captions] == list(labels)
  assert len(set(captions)) > 500  # not a handful of sentences to memorise
  unseen = {"A drawing of the number 4": 4, "EIGHT": 8, "3 or 5": -1, "a cat": -1, "seven, or 7": 7}
  assert {p: digits.caption_class(p) for p in unseen} == unseen
  # The held-out prompts the README evaluates name their digit with words no training caption has.
  heldout = digits.heldout_prompts()
  with open(f"{REPO}/configs/prompts/digits_heldout.txt", encoding="utf-8") as f:
    assert f.read().splitlines() == heldout
  assert [digits.caption_class(p) for p in heldout] == list(np.repeat(np.arange(10), 2))
  trained_words = set(" ".join(captions).replace(",", " ").split())
  assert {"picture", "number"} & trained_words == set()


def test_attend_matches_a_float64_softmax_loop_with_masked_keys():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((2, 3, 8), (2, 5, 8), (2, 5, 8)))
  mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], bool)
  got = np.asarray(attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 2, jnp.asarray(mask)))
  want = np.zeros((2, 3, 8))
  for b in range(2):
    for h in range(2):
      cols = slice(4 * h, 4 * h + 4)
      logits = q[b, :, cols].astype(np.float64) @ k[b, :, cols].T.astype(np.float64) / 2.0  # sqrt(head dim 4)
      logits[:, ~mask[b]] = -np.inf
      weights = np.exp(logits - logits.max(1, keepdims=True))
      want[b, :, cols] = (weights / weights.sum(1, keepdims=True)) @ v[b, :, cols]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", ["bytes", "precomputed"])
def test_text_encoder_ignores_padding_and_reads_missing_text_as_the_null_prompt(encoder):
  model = TextEncoder(encoder=encoder, **ENCODER, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  if encoder == "bytes":
    cond = {"text_tokens": jnp.asarray(conditioning.encode_text(["one", "the digit 7"], 12))}
    longer = {"text_tokens": jnp.asarray(conditioning.encode_text(["one", "the digit 7"], 20))}  # more padding
    other = {"text_tokens": jnp.asarray(conditioning.encode_text(["one", "the digit 8"], 12))}
  else:
    embedding = rng.normal(size=(2, 12, 6)).astype(np.float32)
    mask = np.arange(12)[None] < np.array([[3], [7]])
    cond = {"text_embedding": jnp.asarray(embedding), "text_mask": jnp.asarray(mask)}
    noise = np.where(mask[..., None], 0.0, rng.normal(size=embedding.shape)).astype(np.float32)
    longer = {**cond, "text_embedding": jnp.asarray(embedding + noise)}  # only masked positions change
    other = {**cond, "text_embedding": cond["text_embedding"].at[1, 0].add(1.0)}
  context, valid = model(cond, 2)
  assert context.shape == (2, 13, model.dim) and valid.shape == (2, 13) and bool(valid[:, 0].all())
  padded, _ = model(longer, 2)
  np.testing.assert_allclose(np.where(valid[..., None], padded, 0), np.where(valid[..., None], context, 0),
                             atol=1e-5)
  changed, _ = model(other, 2)
  np.testing.assert_allclose(changed[0], context[0], atol=1e-5)
  assert float(jnp.abs(changed[1] - context[1]).max()) > 1e-3
  if encoder == "precomputed":  # embeddings of another width than config.text.embedding_dim
    with pytest.raises(ValueError, match="config.text.embedding_dim=6") as error:
      model({"text_embedding": jnp.ones((2, 3, 5)), "text_mask": jnp.ones((2, 3), bool)}, 2)
    assert main.is_startup_error(error.value)
  null_context, null_valid = model(None, 2)
  empty, empty_valid = model(conditioning.null_like(cond), 2)
  np.testing.assert_array_equal(null_valid, empty_valid)
  assert int(null_valid.sum()) == 2  # only the learned null position
  np.testing.assert_allclose(null_context[:, 0], empty[:, 0], atol=1e-6)


@functools.cache
def _text_models():
  encoder = lambda: TextEncoder(encoder="bytes", **ENCODER, rngs=nnx.Rngs(1))
  unet = UNet(image_size=8, in_channels=1, channels=8, channel_mults=(1, 2), num_res_blocks=1,
              attention_resolutions=(4,), num_heads=2, num_groups=4, text_encoder=encoder(), rngs=nnx.Rngs(0))
  tokens = MaskedTokenTransformer(vocab_size=7, grid=4, width=16, depth=1, num_heads=2, mlp_ratio=2,
                                  num_classes=3, text_encoder=encoder(), rngs=nnx.Rngs(0))
  dit = DiT(image_size=8, in_channels=1, patch_size=2, width=16, depth=1, num_heads=2, mlp_ratio=2,
            text_encoder=encoder(), rngs=nnx.Rngs(0))
  # adaLN-Zero starts every block and the output at zero: moved off it, so the prompt's path shows.
  params = nnx.state(dit, nnx.Param)
  nnx.update(dit, jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params))
  return {"unet": unet, "tokens": tokens, "dit": dit}


@nnx.jit
def _forward(model, x, cond):
  return model(x, cond)[0] if isinstance(model, MaskedTokenTransformer) else model(x, jnp.array([10, 900]), cond)[0]


@pytest.mark.parametrize("which", ["unet", "tokens", "dit"])
def test_networks_read_the_prompt_through_attention_and_none_as_the_empty_prompt(which):
  model = _text_models()[which]
  if which == "dit":
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  elif which == "unet":
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    # every attention is the diffusers Transformer2DModel layout, with cross-attention keys from the text width
    assert nnx.state(model.mid_block.attentions[0].transformer_blocks[0].attn2.to_k, nnx.Param)["kernel"].shape == (
        16, 16)
  else:
    x = jax.random.randint(jax.random.key(0), (2, 4, 4), 0, 8)
  prompts = lambda *p: jnp.asarray(conditioning.encode_text(list(p), 12))
  base = _forward(model, x, {"text_tokens": prompts("the digit 3", "seven")})
  other = _forward(model, x, {"text_tokens": prompts("the digit 3", "eight")})
  np.testing.assert_allclose(other[0], base[0], atol=1e-5)  # each example reads its own prompt
  assert float(jnp.abs(other[1] - base[1]).max()) > 1e-4
  np.testing.assert_allclose(_forward(model, x, None), _forward(model, x, {"text_tokens": prompts("", "")}),
                             atol=1e-5)


def test_data_carries_captions_or_embeddings_and_mismatches_are_one_line_errors(tmp_path):
  from conprediff_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.data.split, config.data.captions = "train[:30]", "digit_templates"
  source = data_lib.make_source(config.data)
  batch = source.get_batch([4, 1, 2])
  want = digits.captions(digits.load_digits(8)[1][:30])
  assert conditioning.decode_text(batch["text_tokens"]) == [want[4], want[1], want[2]]
  assert source[1]["text_tokens"].tolist() == batch["text_tokens"][1].tolist()

  captions = tmp_path / "captions.txt"
  captions.write_text("\n".join(f"caption {i}" for i in range(30)), encoding="utf-8")
  embeddings = tmp_path / "embeddings.npz"
  np.savez(embeddings, embedding=np.ones((30, 4, 6), np.float32), mask=np.ones((30, 4), bool))
  config.data.captions, config.data.text_embeddings_file = str(captions), str(embeddings)
  batch = data_lib.make_source(config.data).get_batch([29, 3])
  assert conditioning.decode_text(batch["text_tokens"]) == ["caption 29", "caption 3"]
  assert batch["text_embedding"].shape == (2, 4, 6) and batch["text_mask"].dtype == bool

  captions.write_text("too few\n", encoding="utf-8")
  for problem in ("30 examples but 1 rows of text_tokens", "not an .npz with `embedding`"):
    with pytest.raises(ValueError, match=problem) as error:
      data_lib.make_source(config.data)
    assert main.is_startup_error(error.value) and "\n" not in str(error.value)
    np.savez(embeddings, embedding=np.ones((30, 4)))  # the next problem: no mask, and 2-D


def test_token_model_reading_precomputed_embeddings_trains_and_samples_their_prompts(tmp_path, tokenizer_workdir):
  """The token model with text.encoder="precomputed": training text and sampling prompts from .npz files, one step,
  guided. (configs/digits_text.py's own settings run in tests/test_conditioning.py, with the other conditions.)"""
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top
  tokens = tiny_config("masked", tokenizer_workdir)
  tokens.model.text_conditional, tokens.text.encoder, tokens.text.embedding_dim = True, "precomputed", 6
  rng = np.random.default_rng(0)
  data_file, prompt_file = tmp_path / "train_text.npz", tmp_path / "prompts.npz"
  np.savez(data_file, embedding=rng.normal(size=(1797, 5, 6)).astype(np.float32),
           mask=np.arange(5) < rng.integers(1, 6, size=(1797, 1)))
  np.savez(prompt_file, prompts=np.array(["first", "second", "third"]), embedding=rng.normal(size=(3, 5, 6)),
           mask=np.ones((3, 5), bool))
  tokens.data.text_embeddings_file, tokens.sample.prompt_embeddings_file = str(data_file), str(prompt_file)
  tokens.train.steps, tokens.train.cond_dropout, tokens.sample.guidance_scale = 1, 0.2, 2.0
  train.train(tokens, str(tmp_path / "tokens"))
  saved = np.load(tmp_path / "tokens" / "samples.npz")
  assert list(saved["prompts"][:4]) == ["first", "second", "third", "first"]
  assert "labels" not in saved  # free-form prompts name no digit class to score


def test_sample_requests_cycle_the_prompts_and_read_back_the_digit_each_names(tmp_path):
  from conprediff_jax import sample_requests  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.model.text_conditional, config.data.captions = True, "digit_templates"
  config.sample.prompts = "the digit 3| a cat |seven, written by hand"
  asked = sample_requests.request(config, 5, offset=2)
  assert list(asked["prompt"]) == ["seven, written by hand", "the digit 3", "a cat", "seven, written by hand",
                                   "the digit 3"]
  np.testing.assert_array_equal(sample_requests.classes(config, asked), [7, 3, -1, 7, 3])
  tokens = sample_requests.cond(config, asked)["text_tokens"]
  assert tokens.shape == (5, config.text.max_length) and conditioning.decode_text(tokens) == list(asked["prompt"])
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text("one\n\n two \n", encoding="utf-8")
  config.sample.prompts_file = str(prompts_file)
  assert sample_requests.prompts(config) == ["one", "two"]  # the file wins; blank lines are skipped
  config.model.class_conditional = True  # a requested class is the label, not what the prompt says
  np.testing.assert_array_equal(sample_requests.classes(config, sample_requests.request(config, 3)), [0, 1, 2])
  config.sample.prompts_file, config.sample.prompts = "", "|"
  with pytest.raises(ValueError, match="config.sample.prompts is empty") as error:
    sample_requests.request(config, 2)
  assert main.is_startup_error(error.value)
