"""An image folder as a source: recursive, optional class subfolders, bad files skipped and counted.

Validation happens in two places, both cheap:
- at construction, `Image.open` parses each file's header only (~1 KB read): not an image, unknown
  format, zero size or a mode we cannot convert -> skipped. A full `verify()` / decode of every file
  would read the whole dataset (tens of GB for CelebA-HQ at 1024^2) before step 1.
- at read time, a file whose pixel data fails to decode (e.g. truncated) is recorded once and replaced
  by the next readable index. The replacement depends on the file alone, so batches keep their shape
  and stay a function of (seed, step).
With `strict=True` either case raises a one-line ValueError naming the file instead.
"""

import os
import pathlib
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image

from conprediff_jax.data import imaging
from conprediff_jax.data.source import Example, Source

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
# What Pillow raises on bad files: UnidentifiedImageError is an OSError; some plugins raise
# SyntaxError / ValueError / struct errors; DecompressionBombError guards absurd sizes.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def walk_images(root: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields image files under root in sorted order; follows symlinks, skips hidden entries and loops."""
  seen: set[str] = set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in sorted(filenames):
      if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        yield pathlib.Path(dirpath, name)


def describe(error: BaseException) -> str:
  """One line, whatever Pillow put in the message."""
  return " ".join(f"{type(error).__name__}: {error}".split())


def _class_name(root: pathlib.Path, path: pathlib.Path) -> str:
  """The first folder below root; '' for files directly in root (one unlabelled class)."""
  parts = path.relative_to(root).parts
  return parts[0] if len(parts) > 1 else ""


def header_problem(path: pathlib.Path) -> str | None:
  """Why the file cannot be used, judged from its header alone; None if it looks fine."""
  try:
    with Image.open(path) as image:
      mode, (w, h) = image.mode, image.size
  except DECODE_ERRORS as e:
    return f"not a readable image ({describe(e)})"
  if w < 1 or h < 1:
    return f"empty image {w}x{h}"
  if mode not in imaging.CONVERTIBLE_MODES:
    return f"unsupported image mode {mode!r}"
  return None


def decode_at_size(path: pathlib.Path, size: int, decode, *, name: str, setting: str, wrong_size: str):
  """`decode(image)` of the image file at `path`, which must be `size` x `size` (nothing rescaled). Every problem is
  a one-line ValueError that starts with `name` (how to call the file) and, for unreadable files, names the config
  `setting` that lists it; `wrong_size` says what was expected instead."""
  problem = header_problem(path)
  if problem is not None:
    raise ValueError(f"{name}: {problem}; remove or replace it in {setting}")
  with Image.open(path) as image:
    if image.size != (size, size):
      raise ValueError(f"{name} is {image.size[0]}x{image.size[1]}, {wrong_size}")
    try:  # the header was fine; the pixel data may still be truncated
      return decode(image)
    except DECODE_ERRORS as e:
      raise ValueError(f"{name}: not a readable image ({describe(e)}); remove or replace it in {setting}") from e


class FolderSource(Source):
  """Images under `root` (recursively); labels from sorted top-level subfolder names.

  `skipped` lists (path, reason) for every file left out so far; it grows if a file turns out to be
  undecodable when first read. Safe to read from several threads.
  """

  def __init__(self, root: str | os.PathLike[str], image_size: int, channels: int, strict: bool = False):
    self.root = pathlib.Path(root).expanduser()
    self.image_size = image_size
    self.channels = channels
    self.strict = strict
    imaging.target_mode(channels)  # validates channels early
    if not self.root.is_dir():
      raise FileNotFoundError(
          f"config.data.data_dir={str(self.root)!r} is not a directory; point it at a folder of images")
    candidates = list(walk_images(self.root))
    if not candidates:
      raise ValueError(
          f"config.data.data_dir={str(self.root)!r} holds no images "
          f"({', '.join(sorted(IMAGE_EXTENSIONS))}); point it at a folder of images")
    self.class_names = sorted({_class_name(self.root, p) for p in candidates})
    self.num_classes = len(self.class_names)
    class_index = {name: i for i, name in enumerate(self.class_names)}

    self.skipped: list[tuple[str, str]] = []
    self._lock = threading.Lock()
    self._bad: set[int] = set()
    self.paths: list[pathlib.Path] = []
    labels = []
    for path in candidates:
      problem = header_problem(path)
      if problem is not None:
        self._skip(str(path), problem)
        continue
      self.paths.append(path)
      labels.append(class_index[_class_name(self.root, path)])
    self.labels = np.asarray(labels, dtype=np.int32)
    if not self.paths:
      raise ValueError(f"no readable image in config.data.data_dir={str(self.root)!r} "
                       f"({len(self.skipped)} files skipped, e.g. {self.skipped[0][0]}: {self.skipped[0][1]})")

  def _skip(self, path: str, reason: str) -> None:
    if self.strict:
      raise ValueError(f"{path}: {reason} (config.data.strict=True; set it to False to skip bad files)")
    with self._lock:
      self.skipped.append((path, reason))

  def _mark_bad(self, index: int, reason: str) -> None:
    """Records a file that failed at read time once, however many threads hit it."""
    if self.strict:
      self._skip(str(self.paths[index]), reason)  # raises
    with self._lock:
      if index in self._bad:
        return
      self._bad.add(index)
      self.skipped.append((str(self.paths[index]), reason))

  def __len__(self) -> int:
    return len(self.paths)

  def _load(self, index: int) -> np.ndarray:
    with Image.open(self.paths[index]) as image:
      # JPEG only: decode at 1/2, 1/4 or 1/8 scale while staying >= the target size (much faster).
      image.draft(None, (self.image_size, self.image_size))
      image.load()
      return imaging.to_model_image(image, self.image_size, self.channels)

  def __getitem__(self, index: int) -> Example:
    n = len(self.paths)
    index = int(index)
    if not 0 <= index < n:
      raise IndexError(f"index {index} out of range for {n} images")
    for offset in range(n):
      j = (index + offset) % n
      if j in self._bad:
        continue
      try:
        image = self._load(j)
      except DECODE_ERRORS as e:
        self._mark_bad(j, f"undecodable image ({describe(e)})")
        continue
      return {"image": image, "label": self.labels[j]}
    raise ValueError(f"no image in config.data.data_dir={str(self.root)!r} decodes; "
                     f"{len(self.skipped)} files skipped")
