"""Data: random-access sources (embedded digits, TFDS array_record, image folder) and the per-host pipeline.

    source = make_source(config.data)
    batches = Batches(source, config.train.batch_size, config.seed, batch_sharding)
    batch = batches.get(step)   # {"image": [B, S, S, C] in [-1, 1], "label": [B]}, global jax.Arrays

Names resolve lazily so that `import conprediff_jax.data` stays cheap (grain, jax and TFDS load on use).
"""

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Source": "conprediff_jax.data.source",
    "ArraySource": "conprediff_jax.data.source",
    "FolderSource": "conprediff_jax.data.folder_source",
    "TfdsSource": "conprediff_jax.data.tfds_source",
    "SOURCES": "conprediff_jax.data.registry",
    "make_source": "conprediff_jax.data.registry",
    "Batches": "conprediff_jax.data.pipeline",
    "batch_spec": "conprediff_jax.data.pipeline",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
  from conprediff_jax.data.folder_source import FolderSource
  from conprediff_jax.data.pipeline import Batches, batch_spec
  from conprediff_jax.data.registry import SOURCES, make_source
  from conprediff_jax.data.source import ArraySource, Source
  from conprediff_jax.data.tfds_source import TfdsSource


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value  # resolve once
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
