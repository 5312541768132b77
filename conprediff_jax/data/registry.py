"""Sources by name: `config.data.name` -> a builder that takes `config.data`.

To add a source, write a `(data_config) -> Source` function and put it in `SOURCES`.
"""

from collections.abc import Callable

import ml_collections
import numpy as np

from conprediff_jax.data import digits, imaging, text
from conprediff_jax.data.source import ArraySource, Source

SourceBuilder = Callable[[ml_collections.ConfigDict], Source]


def _digits(cfg: ml_collections.ConfigDict) -> Source:
  images, labels = digits.load_digits(cfg.image_size)
  rows = digits.split_rows(cfg.split, len(images))
  images, labels = images[rows], labels[rows]
  if cfg.channels == 3:
    images = np.repeat(images, 3, axis=-1)
  return ArraySource(images, labels, num_classes=10)


def _tfds(cfg: ml_collections.ConfigDict) -> Source:
  from conprediff_jax.data.tfds_source import TfdsSource  # pylint: disable=g-import-not-at-top

  return TfdsSource(cfg.tfds_name, cfg.data_dir, cfg.split, cfg.image_size, cfg.channels)


def _folder(cfg: ml_collections.ConfigDict) -> Source:
  from conprediff_jax.data.folder_source import FolderSource  # pylint: disable=g-import-not-at-top

  if not cfg.data_dir:
    raise ValueError("config.data.data_dir is empty; set it to a folder of images (class subfolders optional)")
  return FolderSource(cfg.data_dir, cfg.image_size, cfg.channels, strict=cfg.get("strict", False))


SOURCES: dict[str, SourceBuilder] = {"digits": _digits, "tfds": _tfds, "folder": _folder}


def make_source(data_config: ml_collections.ConfigDict) -> Source:
  """Builds the source `data_config.name` names; one-line ValueError for bad settings."""
  name = data_config.name
  if name not in SOURCES:
    raise ValueError(f"config.data.name={name!r} is unknown; choose one of {sorted(SOURCES)}")
  if int(data_config.image_size) < 1:
    raise ValueError(f"config.data.image_size={data_config.image_size} must be a positive integer")
  imaging.target_mode(data_config.channels)
  source = SOURCES[name](data_config)
  # Out-of-range labels would be silently clamped by an embedding lookup under jit.
  if source.num_classes > data_config.num_classes:
    raise ValueError(f"config.data.num_classes={data_config.num_classes} but the {name} data has "
                     f"{source.num_classes} classes; set config.data.num_classes={source.num_classes}")
  return text.with_text(source, data_config)
