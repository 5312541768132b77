"""ConPreDiff context prediction (training only): neighbourhoods, decoder, Wasserstein loss.

Imports no backbone: any denoiser that exposes per-position features can use it.
"""

from conprediff_jax.context.decoder import ContextDecoder
from conprediff_jax.context.loss import context_loss
from conprediff_jax.context.neighbourhoods import neighbourhoods
from conprediff_jax.context.wasserstein import SOLVERS
from conprediff_jax.context.wasserstein import wasserstein2

__all__ = ["ContextDecoder", "SOLVERS", "context_loss", "neighbourhoods", "wasserstein2"]
