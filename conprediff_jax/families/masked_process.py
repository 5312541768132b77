"""Absorbing-state (masked) discrete diffusion and MaskGIT decoding, as pure functions of token grids.

Forward process: a fraction gamma(r) of the tokens is replaced by the absorbing [MASK] id, r ~ U(0, 1). Reverse
process: MaskGIT's parallel decoding, which starts from an all-[MASK] grid and, over `steps` steps, commits the
most confident predictions until the masked fraction follows gamma((i + 1) / steps) down to zero.

Schedules follow MaskGIT's convention: r is decoding progress, gamma(0) = 1 (all masked), gamma(1) = 0 (none).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _cosine(r):
  # Clipped: cos(pi / 2) is -4e-8 in float32, and gamma(1) must be exactly 0.
  return jnp.clip(jnp.cos(jnp.pi / 2 * jnp.asarray(r, jnp.float32)), 0.0, 1.0)


def _linear(r):
  return 1.0 - jnp.asarray(r, jnp.float32)


def _square(r):
  return 1.0 - jnp.asarray(r, jnp.float32) ** 2


# gamma(r): the masked fraction at progress r in [0, 1]; decreasing, gamma(0) = 1, gamma(1) = 0.
MASK_SCHEDULES: dict[str, Callable[[jax.Array], jax.Array]] = {"cosine": _cosine, "linear": _linear,
                                                               "square": _square}


def _schedule(name: str):
  if name not in MASK_SCHEDULES:
    raise ValueError(f"mask schedule must be one of {sorted(MASK_SCHEDULES)}, got {name!r}")
  return MASK_SCHEDULES[name]


def _lowest(scores: jax.Array, n: jax.Array) -> jax.Array:
  """Bool [B, N]: the `n[b]` lowest scores of each row (ranks, not a threshold, so ties still give exactly n)."""
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < n[:, None]


def mask_tokens(key: jax.Array, tokens: jax.Array, mask_id: int, schedule: str = "cosine"):
  """Forward process: `(inputs, mask)`, with exactly n = clip(ceil(gamma(r) * N), 1, N) of the N = h * w positions
  of each example replaced by `mask_id`, r ~ U(0, 1) per example and the positions uniform without replacement.

  At least one position is masked so that every example has a loss term.
  """
  b, h, w = tokens.shape
  n_total = h * w
  ratio_key, order_key = jax.random.split(key)
  r = jax.random.uniform(ratio_key, (b,))
  n = jnp.clip(jnp.ceil(_schedule(schedule)(r) * n_total), 1, n_total).astype(jnp.int32)
  mask = _lowest(jax.random.uniform(order_key, (b, n_total)), n).reshape(b, h, w)
  return jnp.where(mask, jnp.asarray(mask_id, tokens.dtype), tokens), mask


def masked_cross_entropy(logits: jax.Array, tokens: jax.Array, mask: jax.Array):
  """`(loss, accuracy)` on masked positions only; unmasked positions' logits do not enter either.

  Both are normalised per example, then averaged over the batch: loss = mean_b [sum over masked positions of
  -log p(token) / number masked in b], and likewise accuracy with [argmax == token] (so every example weighs the
  same, however many of its tokens are masked). An example with no masked position contributes 0 to both.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
  m = mask.astype(jnp.float32)
  count = jnp.maximum(m.sum(axis=(1, 2)), 1.0)
  per_example = lambda v: (v * m).sum(axis=(1, 2)) / count
  return per_example(nll).mean(), per_example(correct).mean()


def _decode_step(logits_fn, key: jax.Array, tokens: jax.Array, step, *, steps: int, mask_id: int,
                 schedule: str = "cosine", temperature: float = 1.0, choice_temperature: float = 4.5,
                 num_unknown: jax.Array | None = None) -> jax.Array:
  """One MaskGIT step `step` (0-based, may be traced) of `steps`: `tokens` [B, h, w] -> the next tokens.

  1. logits = logits_fn(tokens); a candidate is drawn at every position from softmax(logits / temperature)
     (argmax when temperature == 0); decoded positions keep their token.
  2. confidence = the model's log p(candidate) (untempered logits) on masked positions, +inf on decoded ones, plus
     choice_temperature * (1 - (step + 1) / steps) * Gumbel noise.
  3. With N = h * w (or `num_unknown` [B], the count masked at the start, when decoding began from some known
     tokens) and M = the number masked now, n = max(0, min(floor(gamma((step + 1) / steps) * N), M - 1))
     positions stay masked: the n lowest-confidence masked ones. The rest take their candidates. So every step with
     anything masked decodes at least one token, and the last (gamma(1) = 0) decodes all that remain.
  """
  b, h, w = tokens.shape
  n_total = h * w
  flat = tokens.reshape(b, n_total)
  masked = flat == mask_id
  logits = logits_fn(tokens).astype(jnp.float32).reshape(b, n_total, -1)
  if logits.shape[-1] > mask_id:  # a head that also scores [MASK] must never commit it
    logits = logits.at[..., mask_id].set(-jnp.inf)
  sample_key, choice_key = jax.random.split(key)
  if temperature == 0:
    candidates = jnp.argmax(logits, axis=-1)
  else:
    candidates = jax.random.categorical(sample_key, logits / temperature, axis=-1)
  candidates = jnp.where(masked, candidates.astype(flat.dtype), flat)

  logp = jax.nn.log_softmax(logits, axis=-1)
  confidence = jnp.take_along_axis(logp, candidates[..., None].astype(jnp.int32), axis=-1)[..., 0]
  # The same float32 arithmetic whether `step` is a Python int (tests) or traced (fori_loop).
  progress = jnp.asarray(step + 1, jnp.float32) / steps
  noise = choice_temperature * (1.0 - progress) * jax.random.gumbel(choice_key, (b, n_total))
  confidence = jnp.where(masked, confidence + noise, jnp.inf)

  num_masked = masked.sum(axis=-1)
  total = n_total if num_unknown is None else num_unknown
  target = jnp.floor(_schedule(schedule)(progress) * total).astype(jnp.int32)
  keep_masked = jnp.maximum(0, jnp.minimum(target, num_masked - 1))
  # keep_masked < num_masked, and decoded positions have +inf confidence, so only masked positions are re-masked.
  remask = _lowest(confidence, keep_masked)
  return jnp.where(remask, jnp.asarray(mask_id, flat.dtype), candidates).reshape(b, h, w)


def maskgit_decode(logits_fn: Callable[[jax.Array], jax.Array], key: jax.Array, *, batch: int, grid: int,
                   mask_id: int, steps: int, schedule: str = "cosine", temperature: float = 1.0,
                   choice_temperature: float = 4.5, tokens: jax.Array | None = None) -> jax.Array:
  """MaskGIT parallel decoding from an all-[MASK] grid: tokens [batch, grid, grid] int32, none left masked.

  With `tokens` (int32 [batch, grid, grid], [MASK] where unknown) decoding starts from those instead: the known
  tokens stay as they are (token-model inpainting), and the schedule counts the unknown ones only.

  `logits_fn(tokens [B, h, w]) -> [B, h, w, V]` scores the vocabulary (V = mask_id; a head with a [MASK] column has
  it ignored). Step i uses key fold_in(key, i) and follows `_decode_step`: after step i, exactly
  max(0, min(floor(gamma((i + 1) / steps) * N), M_i - 1)) positions remain masked (M_i = masked before step i), so
  every step with a masked position decodes at least one, the last step decodes all, and a decoded token never
  changes.
  `batch`, `grid`, `steps`, `schedule` and the temperatures are static (Python values) under jit.
  """
  num_unknown = None
  if tokens is None:
    tokens = jnp.full((batch, grid, grid), mask_id, jnp.int32)
  else:
    num_unknown = jnp.sum(tokens == mask_id, axis=(1, 2))
  step_fn = lambda i, t: _decode_step(logits_fn, jax.random.fold_in(key, i), t, i, steps=steps, mask_id=mask_id,
                                      schedule=schedule, temperature=temperature,
                                      choice_temperature=choice_temperature, num_unknown=num_unknown)
  return jax.lax.fori_loop(0, steps, step_fn, tokens)
