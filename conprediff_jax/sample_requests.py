"""What a conditional model's samples are asked for (`--mode=sample`, `--mode=eval`), and the `cond` that asks it.

A request is a dict of host arrays, one row per sample:
  "label"         int32 [N]  class-conditional models: the classes in turn (0, 1, ..., 0, 1, ...)
  "prompt"        str [N]    text-conditional models: the prompts in turn, from config.sample.prompts ("|" between
                             prompts), or sample.prompts_file (one per line), or with precomputed text embeddings
                             sample.prompt_embeddings_file (.npz: `prompts` [P], `embedding` [P, L, D], `mask` [P, L])
  "prompt_index"  int32 [N]  which of those prompts
`cond(config, request)` turns it into the model's inputs (conditioning.py); `classes` reads back the class each
sample should show, for class accuracy.
"""

import functools
import os

import jax.numpy as jnp
import numpy as np

from conprediff_jax import conditioning
from conprediff_jax.data import digits
from conprediff_jax.data import text as text_data


@functools.lru_cache(maxsize=8)
def _prompt_embeddings(path: str) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
  with np.load(os.path.expanduser(path)) as f:
    if "prompts" not in f:
      raise ValueError(f"config.sample.prompt_embeddings_file={path!r} has no `prompts` array (the text of each "
                       "embedded prompt)")
    prompts = tuple(str(p) for p in f["prompts"])
  embeddings = text_data.read_embeddings(path)
  if len(prompts) != len(embeddings["text_embedding"]):
    raise ValueError(f"config.sample.prompt_embeddings_file={path!r} holds {len(prompts)} prompts but "
                     f"{len(embeddings['text_embedding'])} embeddings")
  return prompts, embeddings


@functools.lru_cache(maxsize=8)
def _prompts_file(path: str) -> tuple[str, ...]:
  """Read once per process: every batch of samples asks for its prompts."""
  with open(os.path.expanduser(path), encoding="utf-8") as f:
    return tuple(line.strip() for line in f if line.strip())


def prompts(config) -> list[str]:
  """The prompts a text-conditional config samples, in order; a one-line error when it names none."""
  s = config.sample
  if config.text.encoder == "precomputed":
    if not s.prompt_embeddings_file:
      raise ValueError("config.sample.prompt_embeddings_file is empty: a model reading precomputed text embeddings "
                       "samples the prompts embedded there (.npz with prompts, embedding, mask)")
    return list(_prompt_embeddings(s.prompt_embeddings_file)[0])
  if s.prompts_file:
    found = list(_prompts_file(s.prompts_file))
  else:
    found = [p.strip() for p in s.prompts.split("|") if p.strip()]
  if not found:
    raise ValueError("config.sample.prompts is empty: a text-conditional model needs prompts, e.g. "
                     "--config.sample.prompts='the digit 3|a handwritten seven' or config.sample.prompts_file")
  return found


def request(config, num_images: int, offset: int = 0) -> dict | None:
  """Samples `offset .. offset + num_images`: what each is asked for (None for an unconditional model)."""
  rows = offset + np.arange(num_images)
  out = {}
  if config.model.get("class_conditional", False):
    out["label"] = (rows % config.data.num_classes).astype(np.int32)
  if config.model.get("text_conditional", False):
    found = prompts(config)
    out["prompt_index"] = (rows % len(found)).astype(np.int32)
    out["prompt"] = np.asarray(found)[out["prompt_index"]]
  return out or None


def cond(config, asked: dict | None) -> dict | None:
  """The model's inputs for a request."""
  if asked is None:
    return None
  out = {}
  if "label" in asked:
    out["label"] = jnp.asarray(asked["label"], jnp.int32)
  if "prompt" in asked:
    if config.text.encoder == "bytes":
      out["text_tokens"] = jnp.asarray(conditioning.encode_text(list(asked["prompt"]), config.text.max_length))
    else:
      embeddings = _prompt_embeddings(config.sample.prompt_embeddings_file)[1]
      out.update({k: jnp.asarray(v[asked["prompt_index"]]) for k, v in embeddings.items()})
  return out or None


def classes(config, asked: dict | None) -> np.ndarray | None:
  """The class each sample should show: its label, or for captioned digits the digit its prompt names (-1 where
  it names none); None when the request implies no class."""
  if asked is None:
    return None
  if "label" in asked:
    return np.asarray(asked["label"])
  if "prompt" in asked and config.data.get("captions", "") == "digit_templates":
    return np.asarray([digits.caption_class(p) for p in asked["prompt"]], np.int32)
  return None
