"""Seeded mask generators and mask files. Every mask is bool [H, W]: True = known pixel, False = to fill."""

import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from conprediff_jax.data import folder_source


def box(rng: np.random.Generator, size: int) -> np.ndarray:
  """A rectangle of 30-60% of each side, anywhere in the image, to fill."""
  h, w = (rng.integers(round(0.3 * size), round(0.6 * size) + 1) for _ in range(2))
  top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
  known = np.ones((size, size), bool)
  known[top:top + h, left:left + w] = False
  return known


def strokes(rng: np.random.Generator, size: int) -> np.ndarray:
  """Free-form brush strokes (2-4 random polylines, about an eighth of the side thick), to fill."""
  canvas = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  width = max(1, round(size / 8))
  for _ in range(rng.integers(2, 5)):
    points = [tuple(rng.uniform(0, size, 2)) for _ in range(rng.integers(2, 5))]
    draw.line(points, fill=255, width=width, joint="curve")
  return np.asarray(canvas) == 0


def half(rng: np.random.Generator, size: int) -> np.ndarray:
  """The left, right, top or bottom half, to fill."""
  known = np.ones((size, size), bool)
  side = rng.integers(4)
  cut = size // 2
  if side == 0:
    known[:, :cut] = False
  elif side == 1:
    known[:, cut:] = False
  elif side == 2:
    known[:cut] = False
  else:
    known[cut:] = False
  return known


def border(rng: np.random.Generator, size: int) -> np.ndarray:
  """Outpainting: only the central half-size square is known."""
  del rng
  known = np.zeros((size, size), bool)
  lo = size // 4
  known[lo:lo + size // 2, lo:lo + size // 2] = True
  return known


def lines(rng: np.random.Generator, size: int) -> np.ndarray:
  """Every second row, to fill (RePaint's "alternating lines")."""
  del rng
  known = np.ones((size, size), bool)
  known[1::2] = False
  return known


def super_resolve(rng: np.random.Generator, size: int) -> np.ndarray:
  """Only every second pixel of every second row known: 2x super-resolution (RePaint's "super-resolve 2x")."""
  del rng
  known = np.zeros((size, size), bool)
  known[::2, ::2] = True
  return known


GENERATORS = {"box": box, "strokes": strokes, "half": half, "border": border, "lines": lines,
              "super_resolve": super_resolve}


def generate(kind: str, count: int, size: int, seed: int) -> np.ndarray:
  """bool [count, size, size]; mask i depends on (kind, seed, i) only."""
  if kind not in GENERATORS:
    raise ValueError(f"config.inpaint.mask must be one of {sorted(GENERATORS)}, got {kind!r}")
  return np.stack([GENERATORS[kind](np.random.default_rng([seed, i]), size) for i in range(count)])


def read_folder(directory: str, count: int, size: int) -> np.ndarray:
  """bool [count, size, size] from the image files of `directory` in sorted order (white = to fill); a single file
  serves every image."""
  paths = list(folder_source.walk_images(pathlib.Path(os.path.expanduser(directory))))
  if not paths:
    raise ValueError(f"config.inpaint.masks={directory!r} holds no image files; give a folder of mask images "
                     "(white = the region to fill) or leave it empty to generate masks")
  if len(paths) not in (1, count):
    raise ValueError(f"config.inpaint.masks={directory!r} holds {len(paths)} masks for {count} images; give one "
                     "mask per image (matched in sorted order) or a single mask for all")
  out = [folder_source.decode_at_size(path, size, lambda image: np.asarray(image.convert("L")) < 128,
                                      name=f"mask {path}", setting="config.inpaint.masks",
                                      wrong_size=f"its images are {size}x{size}; give masks of the images' size")
         for path in paths]
  return np.stack(out if len(out) == count else out * count)
