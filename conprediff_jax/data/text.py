"""The text a text-conditional model trains on, attached to any source's examples by index (config.data):

  captions="digit_templates"   captions made from the embedded digits' labels (data/digits.py)
  captions="<file>.txt"        one caption per line, line i for example i of the source (UTF-8)
  text_embeddings_file=<.npz>  precomputed embeddings: `embedding` float [N, L, D] and `mask` bool [N, L], row i
                               for example i (how a frozen T5/CLIP encoder's output travels with the data)

Captions become "text_tokens" (conditioning.encode_text, at the longest caption's byte length: the encoder cuts or
pads to its own config.text.max_length); embeddings become "text_embedding" and "text_mask".
"""

from collections.abc import Sequence
import os

import numpy as np

from conprediff_jax import conditioning
from conprediff_jax.data import digits
from conprediff_jax.data.source import Example, MapFn, Source

MAX_CAPTION_BYTES = 256


class TextSource(Source):
  """`source`'s examples with per-example text arrays (`text`: key -> [N, ...]) added."""

  def __init__(self, source: Source, text: dict[str, np.ndarray]):
    for key, values in text.items():
      if len(values) != len(source):
        raise ValueError(f"the data has {len(source)} examples but {len(values)} rows of {key}")
    self.source, self.text = source, text
    self.num_classes = source.num_classes

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Example:
    return {**self.source[index], **{k: v[index] for k, v in self.text.items()}}

  def get_batch(self, indices: Sequence[int], map_fn: MapFn = map):
    idx = np.asarray(indices, dtype=np.int64)
    return {**self.source.get_batch(indices, map_fn), **{k: v[idx] for k, v in self.text.items()}}


def read_captions(spec: str, source: Source) -> list[str]:
  if spec == "digit_templates":
    labels = getattr(source, "labels", None)
    if labels is None or source.num_classes > len(digits.NUMBER_WORDS):
      raise ValueError("config.data.captions='digit_templates' makes captions from digit labels; use it with "
                       "config.data.name='digits', or give a captions file")
    return digits.captions(labels)
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.data.captions={spec!r} is neither 'digit_templates' nor a captions file")
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def read_embeddings(path: str) -> dict[str, np.ndarray]:
  """{"text_embedding": float32 [N, L, D], "text_mask": bool [N, L]} from an .npz; one-line errors."""
  try:
    with np.load(os.path.expanduser(path)) as f:
      embedding, mask = np.asarray(f["embedding"], np.float32), np.asarray(f["mask"], bool)
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{path}: not an .npz with `embedding` [N, L, D] and `mask` [N, L] ({e})") from None
  if embedding.ndim != 3 or mask.shape != embedding.shape[:2]:
    raise ValueError(f"{path}: `embedding` must be [N, L, D] and `mask` [N, L], got {embedding.shape} and "
                     f"{mask.shape}")
  return {"text_embedding": embedding, "text_mask": mask}


def with_text(source: Source, data_config) -> Source:
  """`source` with the text `data_config` names (captions, embeddings, both), or `source` itself if none."""
  text = {}
  if data_config.get("captions", ""):
    captions = read_captions(data_config.captions, source)
    length = min(MAX_CAPTION_BYTES, max((len(c.encode("utf-8")) for c in captions), default=1))
    text["text_tokens"] = conditioning.encode_text(captions, length)
  if data_config.get("text_embeddings_file", ""):
    text.update(read_embeddings(data_config.text_embeddings_file))
  return TextSource(source, text) if text else source
