"""Decoded image -> model input: channel conversion, center square crop, antialiased resize, [-1, 1]."""

import numpy as np
from PIL import Image

# Modes Pillow converts to 8-bit L/RGB without losing the value range; 16-bit and float modes
# ("I;16", "I", "F") would be clipped to white by `convert`, so they count as wrong-shaped.
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


CHANNELS = (1, 3)  # grayscale, RGB


def target_mode(channels: int) -> str:
  if channels not in CHANNELS:
    raise ValueError(f"config.data.channels={channels} is not supported; use 1 (grayscale) or 3 (RGB)")
  return "L" if channels == 1 else "RGB"


def _flatten_alpha(image: Image.Image) -> Image.Image:
  """Composites transparent images onto white: dropping alpha would expose arbitrary hidden colours."""
  has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
  if not has_alpha:
    return image
  rgba = image.convert("RGBA")
  return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def to_model_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
  """Returns float32 [size, size, channels] in [-1, 1] from the central square of `image`."""
  mode = target_mode(channels)
  if image.mode not in CONVERTIBLE_MODES:
    raise ValueError(f"unsupported image mode {image.mode!r}")
  image = _flatten_alpha(image)
  if image.mode != mode:
    image = image.convert(mode)
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  box = (left, top, left + side, top + side)
  if (w, h) != (size, size):
    # Pillow's bicubic widens its kernel by the scale factor when shrinking, so this antialiases.
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
  pixels = np.asarray(image, dtype=np.float32)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  return pixels / 127.5 - 1.0


def array_to_pil(pixels: np.ndarray) -> Image.Image:
  """uint8 [H, W] / [H, W, 1|3|4] -> PIL image (TFDS hands out decoded arrays)."""
  if pixels.dtype != np.uint8:
    raise ValueError(f"expected uint8 image pixels, got {pixels.dtype}")
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  if pixels.ndim == 2:
    return Image.fromarray(pixels)  # L
  if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
    return Image.fromarray(pixels)  # RGB / RGBA
  raise ValueError(f"expected an image [H, W, 1|3|4], got shape {pixels.shape}")
