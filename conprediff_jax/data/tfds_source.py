"""A TFDS dataset prepared as array_record under a local data_dir, read with `tfds.data_source`.

TF-free and offline: nothing is downloaded or fetched from GCS; a dataset that is not prepared in
data_dir is a one-line error that says how to prepare it. tensorflow_datasets is imported here only,
so importing `conprediff_jax.data` does not pay for it.
"""

import os
import pathlib

import numpy as np

from conprediff_jax.data import imaging
from conprediff_jax.data.source import Example, Source


def _prepare_hint(name: str, data_dir: str) -> str:
  return (f"prepare it from an image folder with `python -m conprediff_jax.data.prepare --images=<folder> "
          f"--name={name} --data_dir={data_dir} --resolution=<size>` (docs/datasets.md), or a TFDS catalogue "
          f"dataset with `tfds build {name} --data_dir={data_dir} --file_format=array_record`")


class TfdsSource(Source):
  """One split of a prepared TFDS dataset; label from its "label" feature if there is one, else 0."""

  def __init__(self, name: str, data_dir: str | os.PathLike[str], split: str, image_size: int,
               channels: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow; only when used

    imaging.target_mode(channels)  # validates channels early
    if not name:
      raise ValueError("config.data.tfds_name is empty; set it to a TFDS dataset name, e.g. 'celebahq256'")
    if not str(data_dir):
      raise ValueError(f"config.data.data_dir is empty; set it to the TFDS data_dir holding {name!r} "
                       "(nothing is downloaded at run time)")
    data_dir = str(pathlib.Path(data_dir).expanduser())
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f"config.data.data_dir={data_dir!r} does not exist; "
                              f"point it at the TFDS data_dir holding {name!r}, or {_prepare_hint(name, data_dir)}")
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise FileNotFoundError(
          f"config.data.tfds_name={name!r} is neither a registered TFDS dataset nor prepared under "
          f"config.data.data_dir={data_dir!r}; {_prepare_hint(name, data_dir)}") from None
    if not builder.is_prepared():
      raise FileNotFoundError(f"config.data.tfds_name={name!r} is not prepared under "
                              f"config.data.data_dir={data_dir!r}; {_prepare_hint(name, data_dir)}")
    try:
      self._records = tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False)
    except NotImplementedError:  # prepared as tfrecord: no random access
      raise ValueError(f"config.data.tfds_name={name!r} in config.data.data_dir={data_dir!r} is not stored "
                       f"as array_record; {_prepare_hint(name, data_dir)}") from None
    except ValueError as e:
      if "split" not in str(e).lower():
        raise
      raise ValueError(f"config.data.split={split!r} is not a split of {name!r}; "
                       f"it has {sorted(builder.info.splits.keys())}") from None

    features = builder.info.features
    self._image_key = self._find_image_key(features, tfds.features.Image, name)
    label = features["label"] if "label" in features.keys() else None
    self._has_label = label is not None
    self.num_classes = int(label.num_classes) if isinstance(label, tfds.features.ClassLabel) else 1
    self.name, self.split = name, split
    self.image_size, self.channels = image_size, channels

  @staticmethod
  def _find_image_key(features, image_type: type, name: str) -> str:
    """"image" if present, else the only top-level image feature."""
    keys = [k for k, f in features.items() if isinstance(f, image_type)]
    if "image" in keys:
      return "image"
    if len(keys) == 1:
      return keys[0]
    raise ValueError(f"config.data.tfds_name={name!r} has {len(keys)} top-level image features {keys}; "
                     "expected one named 'image'")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Example:
    record = self._records[int(index)]
    image = imaging.to_model_image(
        imaging.array_to_pil(np.asarray(record[self._image_key])), self.image_size, self.channels)
    label = np.int32(record["label"]) if self._has_label else np.int32(0)
    return {"image": image, "label": label}
