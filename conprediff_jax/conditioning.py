"""What a model is conditioned on, for every family: the `cond` dict, condition dropout, classifier-free guidance.

A `cond` is a dict of per-example arrays (leading axis: the batch), or None for an unconditional model:

  "label"           int32 [B]        a class in [0, num_classes), or NULL_LABEL: "no class"
  "text_tokens"     int32 [B, L]     a prompt as byte-level tokens (`encode_text`; PAD after its end), for a model
                                     with the built-in text encoder (config.text.encoder="bytes")
  "text_embedding"  float32 [B, L, D]  a prompt embedded by a frozen encoder (T5, CLIP) ahead of time, and
  "text_mask"       bool [B, L]        which of its L positions are real (config.text.encoder="precomputed")
  "known_image"     float32 [B, H, W, C]  inpainting: the image, of which only the known pixels are read, and
  "known_mask"      bool [B, H, W, 1]     where they are, for a mask-conditioned UNet (inpainting/mask_conditioning.py)

Data batches carry the same keys beside "image"; a model reads the ones `model_keys` names. Each key's NULLS value
is "no condition" (no class, the empty prompt, nothing known), which the model maps to learned null inputs, so one network is both
the conditional and the unconditional model that guidance needs.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from conprediff_jax.config_validation import ConfigError

NULL_LABEL = -1
# Byte-level text: token = byte + 1, so 0 can pad; BOS opens every encoded prompt inside the encoder.
PAD, BOS, TEXT_VOCAB = 0, 257, 258
NULLS = {"label": NULL_LABEL, "text_tokens": PAD, "text_embedding": 0.0, "text_mask": False, "known_image": 0.0,
         "known_mask": False}
KEYS = tuple(NULLS)


def model_keys(config) -> tuple[str, ...]:
  """The condition keys the config's model reads (none for an unconditional model)."""
  keys = ("label",) if config.model.get("class_conditional", False) else ()
  if config.model.get("text_conditional", False):
    keys += ("text_tokens",) if config.text.encoder == "bytes" else ("text_embedding", "text_mask")
  if config.model.get("mask_conditional", False):
    keys += ("known_image", "known_mask")
  return keys


def from_batch(batch: dict, keys: Sequence[str] = KEYS) -> dict | None:
  """The conditioning `keys` of a data batch (None if it has none)."""
  cond = {k: batch[k] for k in keys if k in batch}
  return cond or None


def null_like(cond: dict) -> dict:
  """The unconditional input with the shapes of `cond`."""
  return {k: jnp.full_like(v, NULLS[k]) for k, v in cond.items()}


def drop(cond: dict | None, key: jax.Array, rate: float) -> dict | None:
  """Condition dropout: each example's whole condition is replaced by the null one with probability `rate`, so
  training also fits the unconditional model (Ho & Salimans 2022)."""
  if cond is None or rate <= 0:
    return cond
  batch = jax.tree.leaves(cond)[0].shape[0]
  dropped = jax.random.bernoulli(key, rate, (batch,))
  null = null_like(cond)
  return {k: jnp.where(dropped.reshape((batch,) + (1,) * (v.ndim - 1)), null[k], v) for k, v in cond.items()}


def classifier_free(fn: Callable, cond: dict | None, scale: float) -> Callable:
  """`fn(*inputs, cond) -> out` guided: `*inputs -> u + scale * (c - u)`, with c and u the conditional and
  unconditional outputs (eps, v or logits: guidance is linear in any of them). scale 1 is the conditional model
  alone (no extra work), 0 the unconditional one. Both halves run as one forward pass over a doubled batch, not
  two sequential ones."""
  if cond is None or scale == 1.0:
    return lambda *inputs: fn(*inputs, cond)
  both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, null_like(cond))

  def guided(*inputs):  # inputs may be pytrees (None included): every array is doubled along its batch axis
    out = fn(*jax.tree.map(lambda x: jnp.concatenate([x, x]), inputs), both)
    conditional, unconditional = jnp.split(out, 2)
    return unconditional + scale * (conditional - unconditional)

  return guided


def encode_text(prompts: Sequence[str], length: int) -> np.ndarray:
  """int32 [N, length]: each prompt's UTF-8 bytes + 1, cut at `length` bytes, padded with PAD."""
  tokens = np.full((len(prompts), length), PAD, np.int32)
  for i, prompt in enumerate(prompts):
    data = np.frombuffer(prompt.encode("utf-8")[:length], np.uint8)
    tokens[i, :len(data)] = data.astype(np.int32) + 1
  return tokens


def decode_text(tokens: np.ndarray) -> list[str]:
  """The prompts `encode_text` encoded (a prompt cut inside a multi-byte character loses that character)."""
  return [bytes(int(t) - 1 for t in row if t != PAD).decode("utf-8", errors="ignore") for row in np.asarray(tokens)]


# ------------------------------------------------------------------------------------------------------------------
# The config's conditioning, checked before anything is built (families.validate).
# ------------------------------------------------------------------------------------------------------------------
def check_config(config) -> None:
  """Class labels, prompts and guidance: what the model is conditioned on and what it samples from."""
  m, s = config.model, config.get("sample", {})
  if m.get("class_conditional") and config.data.num_classes < 1:
    raise ConfigError("data.num_classes", f"{config.data.num_classes} with config.model.class_conditional=True",
                      "set the number of classes, or class_conditional=False")
  if m.get("text_conditional"):
    check_text(config)
  scale = s.get("guidance_scale", 1.0)
  if scale != 1.0 and not (m.get("class_conditional") or m.get("text_conditional")):
    raise ConfigError("sample.guidance_scale", f"{scale} for an unconditional model (guidance needs a condition)",
                      "set config.model.class_conditional (or text_conditional) =True and train, or leave "
                      "guidance_scale=1")
  if scale != 1.0 and config.train.get("cond_dropout", 0.0) == 0:
    raise ConfigError("sample.guidance_scale", f"{scale} with config.train.cond_dropout=0: the unconditional "
                      "model guidance subtracts was never trained", "train with cond_dropout > 0 (e.g. 0.1)")


def check_text(config) -> None:
  """Where a text-conditional model's training text and its sampling prompts come from (checked now: samples are
  written after training, too late to learn that there are no prompts)."""
  t, d, s = config.text, config.data, config.sample
  if t.encoder == "bytes":
    if not t.get("null_position", True):
      raise ConfigError("text.null_position", "is False with config.text.encoder='bytes', whose context always "
                        "opens with its BOS position", "set it True, or use config.text.encoder='precomputed'")
    if t.width % t.num_heads:
      raise ConfigError("text.num_heads", f"{t.num_heads} does not divide config.text.width={t.width}",
                        "use a divisor of the width")
    if not d.captions:
      raise ConfigError("data.captions", "is empty with config.model.text_conditional=True",
                        "set 'digit_templates' (the embedded digits) or a captions file, one line per example")
    if d.captions == "digit_templates" and d.name != "digits":
      raise ConfigError("data.captions", f"'digit_templates' with config.data.name={d.name!r}",
                        "give a captions file for this data (one caption per line, in the source's order)")
    if not (s.prompts.strip(" |") or s.prompts_file):
      raise ConfigError("sample.prompts", "is empty (and so is sample.prompts_file): a text-conditional model "
                        "samples from prompts", "e.g. --config.sample.prompts='the digit 3|a handwritten seven'")
    return
  for key, value in (("text.embedding_dim", t.embedding_dim), ("data.text_embeddings_file", d.text_embeddings_file),
                     ("sample.prompt_embeddings_file", s.prompt_embeddings_file)):
    if not value:
      raise ConfigError(key, f"is {value!r} with config.text.encoder='precomputed'",
                        "set it: the width of the stored embeddings, the training data's embeddings (.npz: "
                        "embedding, mask), and the sampling prompts' (.npz: prompts, embedding, mask)")
