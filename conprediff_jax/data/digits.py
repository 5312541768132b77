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
