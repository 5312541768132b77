"""Sample-quality metrics: FID / KID and precision / recall (NumPy), the FID Inception-v3 (Flax NNX), and FD-digits for the embedded set.

Importing this package loads NumPy only; the JAX models load on first use of their names. Torch is never
imported here (only the one-off `convert_fid_weights` script uses it).
"""

import importlib

from conprediff_jax.evaluation.fid import feature_statistics
from conprediff_jax.evaluation.fid import frechet_distance
from conprediff_jax.evaluation.fid import kid
from conprediff_jax.evaluation.fid import load_statistics
from conprediff_jax.evaluation.fid import save_statistics
from conprediff_jax.evaluation.manifold import precision_recall

_LAZY = {
    "InceptionFeatures": "conprediff_jax.evaluation.inception",
    "FIDInceptionV3": "conprediff_jax.evaluation.inception",
    "load_fid_inception": "conprediff_jax.evaluation.inception",
    "DigitsMetric": "conprediff_jax.evaluation.digits_metric",
}

__all__ = ["feature_statistics", "frechet_distance", "kid", "load_statistics", "precision_recall", "save_statistics",
           *_LAZY]


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
