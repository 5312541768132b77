"""The context decoder psi: per position, Q reparameterised samples decoded by one small MLP per stride."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

# log sigma is clipped so that sigma stays in [e^-7, e^2]: no collapse to exactly zero, no blow-up.
LOG_SIGMA_RANGE = (-7.0, 2.0)


class ContextDecoder(nnx.Module):
  """Maps features h [B, H, W, F] to Q predicted neighbours per stride [B, H, W, S, Q, target_dim].

  Parameters only (no batch statistics, no nnx RNG state): `nnx.split(decoder, nnx.Param)` is the whole
  state, and the noise comes from an explicit key so a train step stays a pure function of its inputs.
  """

  def __init__(self, feature_dim: int, target_dim: int, *, num_strides: int, num_samples: int = 8,
               latent_dim: int | None = None, hidden_dim: int = 64, rngs: nnx.Rngs):
    if min(feature_dim, target_dim, num_strides, num_samples, hidden_dim) < 1:
      raise ValueError("ContextDecoder sizes must all be positive")
    latent_dim = feature_dim if latent_dim is None else latent_dim
    self.feature_dim, self.target_dim = feature_dim, target_dim
    self.num_strides, self.num_samples, self.latent_dim = num_strides, num_samples, latent_dim
    # W_mu and W_sigma as one matmul.
    self.moments = nnx.Linear(feature_dim, 2 * latent_dim, rngs=rngs)
    # One MLP g_s per stride, stored stacked so all strides run as one einsum.
    init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.w1 = nnx.Param(init(rngs.params(), (num_strides, latent_dim, hidden_dim)))
    self.b1 = nnx.Param(jnp.zeros((num_strides, hidden_dim)))
    self.w2 = nnx.Param(init(rngs.params(), (num_strides, hidden_dim, target_dim)))
    self.b2 = nnx.Param(jnp.zeros((num_strides, target_dim)))

  def __call__(self, features: jax.Array, key: jax.Array) -> jax.Array:
    """features [..., F] -> predictions [..., S, Q, target_dim]; `key` draws the Q samples."""
    return self.sample(self.moments_of(features), key)

  def moments_of(self, features: jax.Array) -> jax.Array:
    """features [..., F] -> the first layer's output [..., 2 * latent_dim] (mu, then log sigma)."""
    if features.shape[-1] != self.feature_dim:
      raise ValueError(f"ContextDecoder expects {self.feature_dim} features, got {features.shape[-1]}")
    return self.moments(features)

  def sample(self, moments: jax.Array, key: jax.Array) -> jax.Array:
    """moments [..., 2 * latent_dim] (`moments_of` the features) -> predictions [..., S, Q, target_dim]."""
    out = self.sample_points_major(jnp.moveaxis(moments, -1, 0), key)  # [Q, T, S, ...]
    return jnp.moveaxis(out, (0, 1, 2), (-2, -1, -3))

  def sample_points_major(self, moments: jax.Array, key: jax.Array) -> jax.Array:
    """moments [2 * latent_dim, ...] of the positions [...] -> predictions [Q, target_dim, S, ...]: the positions
    stay the minor axes throughout (on a TPU a small minor axis, Q, L, D or T, fills a whole tile), the layout
    of the sorted solver (sorted_solver.solve_points_major)."""
    def sample(mlps, moments, key):
      latent = self.latent_dim
      mu, log_sigma = moments[:latent], jnp.clip(moments[latent:], *LOG_SIGMA_RANGE)  # [L, ...]
      return mlps(mu + jnp.exp(log_sigma) * self.noise(key, mu.shape[1:], mu.dtype))  # z [Q, L, ...]

    return jax.lax.platform_dependent(moments, key, cpu=functools.partial(sample, self._mlps_as_matmuls),
                                      default=functools.partial(sample, self._mlps_as_einsums))

  def noise(self, key: jax.Array, positions: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """The standard normal draws [Q, L, *positions] that sample_points_major turns into the Q samples."""
    return jax.random.normal(key, (self.num_samples, self.latent_dim) + tuple(positions), dtype)

  def _mlps_as_einsums(self, z: jax.Array) -> jax.Array:
    """Every stride's MLP on z [Q, L, ...] as two einsums over the strides -> [Q, T, S, ...]."""
    lead = (1,) * (z.ndim - 2)
    hidden = jnp.einsum("ql...,sld->sdq...", z, self.w1[...]) + self.b1[...].reshape(self.b1.shape + (1,) + lead)
    out = jnp.einsum("sdq...,sdt->qts...", nnx.gelu(hidden), self.w2[...])
    return out + self.b2[...].T.reshape((1,) + self.b2.shape[::-1] + lead)

  def _mlps_as_matmuls(self, z: jax.Array) -> jax.Array:
    """The same, each stride's MLP as two plain matrix products, [D, L] @ [L, Q * positions]: XLA:CPU runs these
    and their gradients 2x faster than the einsums, a TPU's compiler moves 4x the bytes (docs/scaling.md)."""
    q, positions = z.shape[0], z.shape[2:]
    z = jnp.moveaxis(z, 1, 0).reshape(self.latent_dim, -1)  # [L, Q * positions]
    out = jnp.stack([self.w2[s].T @ nnx.gelu(self.w1[s].T @ z + self.b1[s][:, None]) + self.b2[s][:, None]
                     for s in range(self.num_strides)])  # [S, T, Q * positions]
    return jnp.moveaxis(out.reshape((self.num_strides, self.target_dim, q) + positions), (0, 1, 2), (2, 1, 0))
