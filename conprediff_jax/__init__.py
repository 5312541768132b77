"""conprediff_jax: diffusion models with context prediction (ConPreDiff) in JAX/Flax NNX."""

__version__ = "0.1.0"
