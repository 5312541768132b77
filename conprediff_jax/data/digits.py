"""The embedded default: scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes)."""

import functools
import re

import numpy as np


@functools.lru_cache(maxsize=4)
def load_digits(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images float32 [N, S, S, 1] in [-1, 1], labels int32 [N]), bilinearly resized to S x S."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  small = (digits.images / 16.0).astype(np.float32)  # [N, 8, 8] in [0, 1]
  resized = np.stack([
      np.asarray(Image.fromarray(im, mode="F").resize((image_size, image_size), Image.BILINEAR))
      for im in small
  ])
  images = np.clip(resized, 0.0, 1.0)[..., None] * 2.0 - 1.0
  return images.astype(np.float32), digits.target.astype(np.int32)


def split_rows(split: str, count: int) -> slice:
  """"train" is every image; "train[a:b]" the rows a..b-1, with Python's slice bounds ("train[1600:]": the last
  197, held out from "train[:1600]")."""
  match = re.fullmatch(r"train(?:\[(-?\d*):(-?\d*)\])?", split.replace(" ", ""))
  if match is None:
    raise ValueError(f"config.data.split={split!r} is not a split of the digits; use 'train' or a slice of it "
                     "like 'train[:1600]'")
  start, stop = (int(v) if v else None for v in match.groups(default=""))
  if not range(count)[start:stop]:
    raise ValueError(f"config.data.split={split!r} holds none of the {count} digits")
  return slice(start, stop)


# Captions for text conditioning, made from the labels (config.data.captions="digit_templates"): a prefix, the
# digit as a word or a numeral, a suffix, drawn per example. Hundreds of distinct captions, not a few sentences, so
# that the text encoder must find the digit in the prompt rather than memorise whole strings; caption_class reads
# the digit of any prompt back. HELDOUT_TEMPLATES use words no training caption has (configs/prompts/).
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_PREFIXES = ("", "a handwritten ", "the digit ", "a drawing of a ", "a scan of the digit ", "digit ",
                    "an image of a handwritten ")
CAPTION_SUFFIXES = ("", ", written by hand", " in black ink", " on a white background", ", small", ", bold strokes")
HELDOUT_TEMPLATES = ("a picture of the {word}", "number {digit}")


def captions(labels: np.ndarray, seed: int = 0) -> list[str]:
  """One caption per label: prefix, digit (word or numeral) and suffix drawn from a generator seeded by `seed`."""
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, [len(CAPTION_PREFIXES), 2, len(CAPTION_SUFFIXES)], size=(len(labels), 3))
  return [CAPTION_PREFIXES[p] + (NUMBER_WORDS[y] if numeral == 0 else str(y)) + CAPTION_SUFFIXES[q]
          for y, (p, numeral, q) in zip(np.asarray(labels), picks)]


def heldout_prompts() -> list[str]:
  """Each digit in each held-out template: configs/prompts/digits_heldout.txt."""
  return [t.format(word=NUMBER_WORDS[y], digit=y) for y in range(10) for t in HELDOUT_TEMPLATES]


def caption_class(text: str) -> int:
  """The one digit a prompt names (as a word or a numeral), or -1 if it names none or several."""
  words = re.findall(r"[a-z]+|\d", text.lower())
  named = {NUMBER_WORDS.index(w) if w in NUMBER_WORDS else int(w) for w in words if w in NUMBER_WORDS or w.isdigit()}
  return named.pop() if len(named) == 1 else -1
