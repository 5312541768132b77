"""Sources by name: `config.data.name` -> a builder that takes `config.data`.

To add a source, write a `(data_config) -> Source` function and put it in `SOURCES`.
"""

from collections.abc import Callable

import os

import ml_collections
import numpy as np

from conprediff_jax.config_validation import NON_NEGATIVE, POSITIVE, ConfigError, check_values
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


def check_config(config, files: bool = True) -> None:
  """config.data's settings (ConfigError, one line); with `files`, also that what they name is on disk."""
  d = config.data
  check_settings(d)
  if not files:
    return
  if d.name in ("tfds", "folder") and not os.path.isdir(os.path.expanduser(d.data_dir)):
    what = "the TFDS data_dir holding the prepared dataset" if d.name == "tfds" else "a folder of images"
    problem = "is empty" if not d.data_dir else f"{d.data_dir!r} is not an existing directory"
    raise ConfigError("data.data_dir", f"{problem} (config.data.name={d.name!r})", f"point it at {what}")
  captions = d.get("captions", "")
  if (config.model.get("text_conditional") and captions and captions != "digit_templates"
      and not os.path.isfile(os.path.expanduser(captions))):
    raise ConfigError("data.captions", f"{captions!r} is neither 'digit_templates' nor an existing file",
                      "point it at a captions file")


CHOICES = {"data.name": tuple(SOURCES), "data.channels": imaging.CHANNELS}  # 1: grayscale, 3: RGB
BOUNDS = {"data.image_size": POSITIVE, "data.num_classes": NON_NEGATIVE}


def check_settings(d: ml_collections.ConfigDict) -> None:
  """The data config's own values, whatever is on disk."""
  check_values(ml_collections.ConfigDict({"data": d}), CHOICES, BOUNDS)
  if d.name == "tfds" and not d.tfds_name:
    raise ConfigError("data.tfds_name", "is empty with config.data.name='tfds'",
                      "set a prepared TFDS dataset, e.g. 'celebahq256'")


def make_source(data_config: ml_collections.ConfigDict) -> Source:
  """Builds the source `data_config.name` names; one-line ValueError for bad settings."""
  check_settings(data_config)
  source = SOURCES[data_config.name](data_config)
  # Out-of-range labels would be silently clamped by an embedding lookup under jit.
  if source.num_classes > data_config.num_classes:
    raise ValueError(f"config.data.num_classes={data_config.num_classes} but the {data_config.name} data has "
                     f"{source.num_classes} classes; set config.data.num_classes={source.num_classes}")
  return text.with_text(source, data_config)
