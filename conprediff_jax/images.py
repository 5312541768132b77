"""Samples as uint8 arrays, PNG grids, a loss plot (pillow only), and arrays saved whole or not at all."""

import math

import numpy as np
from PIL import Image, ImageDraw

from conprediff_jax import atomic_files


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 [N, H, W, C], rounding as image writers do."""
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, *, columns: int | None = None, row_keys: np.ndarray | None = None,
         pad: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] mosaic, filled row by row; with
  `row_keys` (e.g. class labels, [N]) one row per distinct key instead, in sorted order."""
  n, h, w, c = images.shape
  if row_keys is None:
    cols = columns or math.ceil(math.sqrt(n))
    cells = [divmod(i, cols) for i in range(n)]
  else:
    keys = list(np.unique(row_keys))
    seen = {k: 0 for k in keys}
    cells = []
    for k in row_keys:
      cells.append((keys.index(k), seen[k]))
      seen[k] += 1
  rows, cols = max(r for r, _ in cells) + 1, max(q for _, q in cells) + 1
  out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
  for (r, q), im in zip(cells, images):
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = im
  return out


def save_grid(path: str, images: np.ndarray, *, row_keys: np.ndarray | None = None, scale: int = 4) -> None:
  """Writes a PNG mosaic (`grid`), upscaled with nearest neighbour so small images stay legible."""
  mosaic = grid(images, row_keys=row_keys)
  pil = Image.fromarray(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic)
  with atomic_files.replacing(path, "wb") as f:
    pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST).save(f, format="PNG")


def save_loss_plot(path: str, steps, losses, *, size=(640, 360), margin=40) -> None:
  """A minimal line plot of loss against step (log-scaled loss), so the workdir shows training at a glance."""
  steps, losses = np.asarray(steps, np.float64), np.asarray(losses, np.float64)
  keep = np.isfinite(losses) & (losses > 0)
  steps, losses = steps[keep], np.log10(losses[keep])
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  w, h = size
  draw.rectangle([margin, margin // 2, w - margin // 2, h - margin], outline="black")
  if len(steps) >= 2:
    sx = lambda s: margin + (s - steps[0]) / max(steps[-1] - steps[0], 1e-9) * (w - 1.5 * margin)
    lo, hi = losses.min(), losses.max()
    sy = lambda v: h - margin - (v - lo) / max(hi - lo, 1e-9) * (h - 1.5 * margin)
    draw.line([(sx(s), sy(v)) for s, v in zip(steps, losses)], fill="steelblue", width=2)
    draw.text((margin + 4, margin // 2 + 2), f"loss {10**hi:.4g}", fill="black")
    draw.text((margin + 4, h - margin - 14), f"loss {10**lo:.4g} (log scale)", fill="black")
    draw.text((margin, h - margin + 4), f"step {int(steps[0])}", fill="black")
    draw.text((w - 3 * margin, h - margin + 4), f"step {int(steps[-1])}", fill="black")
  with atomic_files.replacing(path, "wb") as f:
    image.save(f, format="PNG")


def save_npz(path: str, **arrays) -> None:
  """np.savez through a temporary file renamed when whole: a killed run, or a reader in another process, sees the
  whole file or none."""
  with atomic_files.replacing(path, "wb") as f:
    np.savez(f, **arrays)
