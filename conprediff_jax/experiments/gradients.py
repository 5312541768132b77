r"""Where the context loss pulls a trained denoiser, by noise level: its gradient against the point loss's.

    python -m conprediff_jax.experiments.gradients --workdir=workdirs/default          # --config.context.weight=0.1

On the EMA weights of the workdir's latest checkpoint (a run with or without the context loss), a context head is
first fitted to the frozen denoiser (`--fit_steps` Adam steps on the context loss alone, timesteps uniform, the
config's context settings), so that it scores what the features can predict. Then, for timesteps drawn within each
bin of `--bins`, on `--batches` batches of real images:

  cosine      cos(g_ctx, g_point) over the denoiser's parameters: < 0 means the context term undoes the point loss
  ratio       |lambda g_ctx| / |g_point|, with the config's lambda and timestep weighting
  w2          the fitted head's context loss (W2^2) at these timesteps
  constant    the same loss for a constant guess (every neighbour predicted as the data's mean value): how much
              better than nothing the features predict the neighbourhood

Gaussian family only (its timesteps are what is binned). Prints a table; writes gradients.json into the workdir.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from conprediff_jax import cli


def define_flags():
  return (cli.define_config("The config the workdir was trained with"),
          flags.DEFINE_string("workdir", "workdirs/default", "A trained run."),
          flags.DEFINE_list("bins", ["0", "100", "300", "500", "700", "900", "1000"], "Timestep bin edges."),
          flags.DEFINE_integer("batches", 8, "Batches per bin."),
          flags.DEFINE_integer("fit_steps", 300, "Adam steps fitting the context head to the frozen model."))


def measure(config, workdir: str, edges: list[int], batches: int, fit_steps: int) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from conprediff_jax import data as data_lib, families, sampling  # pylint: disable=g-import-not-at-top
  from conprediff_jax.context import neighbourhoods, objective  # pylint: disable=g-import-not-at-top
  from conprediff_jax.families import LossOutput, GaussianFamily  # pylint: disable=g-import-not-at-top

  if config.family != "gaussian":
    raise ValueError(f"the gradient diagnostic bins Gaussian timesteps; config.family={config.family!r} has none")
  if not config.context.weight:
    config.context.weight = 0.1  # a baseline's config: measure the default lambda's pull
  families.check_workdir(config, workdir, mode="eval")
  trained = sampling.load_latest_ema(config, workdir)
  family: GaussianFamily = trained.family
  model = nnx.merge(trained.model_def, trained.weights)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  head = objective.build_head(config, family.feature_spec(), jax.random.key(config.seed + 17))
  head_def, head_params = nnx.split(head, nnx.Param)
  term = objective.make_term(config)
  diffusion, step = family.diffusion, jnp.asarray(10**9)  # past any lambda warm-up

  def losses(model_params, head_params, images, t, key):
    m = nnx.merge(graphdef, model_params, rest)
    k_loss, k_ctx = jax.random.split(key)
    out = diffusion.loss(m, {"image": images}, k_loss, t=t)
    weighted, value = term(nnx.merge(head_def, head_params),
                           LossOutput(out.loss, {}, out.features, out.clean, out.denoised, out.signal), k_ctx, step)
    return out.loss, weighted, value

  tx = optax.adam(1e-3)

  @jax.jit
  def fit(head_params, opt_state, images, key):
    k_t, k = jax.random.split(key)
    t = jax.random.randint(k_t, images.shape[:1], 0, diffusion.timesteps)
    grads = jax.grad(lambda h: losses(jax.lax.stop_gradient(params), h, images, t, k)[2])(head_params)
    updates, opt_state = tx.update(grads, opt_state, head_params)
    return optax.apply_updates(head_params, updates), opt_state

  @jax.jit
  def probe(head_params, images, t, key):
    g_point = jax.grad(lambda p: losses(p, head_params, images, t, key)[0])(params)
    (weighted, value), g_ctx = jax.value_and_grad(lambda p: losses(p, head_params, images, t, key)[1:],
                                                  has_aux=True)(params)
    del weighted
    flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
    a, b = flat(g_ctx), flat(g_point)
    return jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)), jnp.linalg.norm(a) / jnp.linalg.norm(b), value

  source = data_lib.make_source(config.data)
  rng = np.random.default_rng(config.seed)
  draw = lambda: jnp.asarray(source.get_batch(rng.choice(len(source), config.train.batch_size))["image"])
  mean_value = float(np.mean(source.get_batch(np.arange(min(len(source), 1024)))["image"]))
  opt_state, key = tx.init(head_params), jax.random.key(config.seed + 23)
  for i in range(fit_steps):
    head_params, opt_state = fit(head_params, opt_state, draw(), jax.random.fold_in(key, i))

  rows = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    cosines, ratios, w2, constant = [], [], [], []
    for i in range(batches):
      images = draw()
      k_t, k = jax.random.split(jax.random.fold_in(key, 10**6 + lo * 1000 + i))
      t = jax.random.randint(k_t, images.shape[:1], lo, hi)
      cosine, ratio, value = jax.device_get(probe(head_params, images, t, k))
      cosines.append(float(cosine))
      ratios.append(float(ratio))
      w2.append(float(value))
      values, mask = neighbourhoods(images.astype(jnp.float32), tuple(config.context.strides))
      per_set = jnp.sum(jnp.where(mask[..., None], (values - mean_value) ** 2, 0.0), (-2, -1)) / jnp.maximum(
          jnp.sum(mask, -1), 1)
      constant.append(float(jnp.sum(jnp.where(jnp.any(mask, -1), per_set, 0.0)) / jnp.sum(jnp.any(mask, -1))))
    abar = family.diffusion.alphas_cumprod[lo:hi].mean()
    rows.append({"t_low": lo, "t_high": hi, "alpha_bar": float(abar), "cosine": float(np.mean(cosines)),
                 "cosine_sem": float(np.std(cosines, ddof=1) / np.sqrt(len(cosines))) if batches > 1 else 0.0,
                 "ratio": float(np.mean(ratios)), "w2": float(np.mean(w2)),
                 "constant": float(np.mean(constant))})
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| t | mean abar | cos(g_ctx, g_point) | lambda\\|g_ctx\\| / \\|g_point\\| | W2² of the head | constant guess |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['t_low']}-{r['t_high']} | {r['alpha_bar']:.3f} | {r['cosine']:+.3f} ± {r['cosine_sem']:.3f} "
                 f"| {r['ratio']:.3f} | {r['w2']:.3f} | {r['constant']:.3f} |")
  return "\n".join(lines)


def main(argv, config_flag, workdir_flag, bins_flag, batches_flag, fit_flag):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = workdir_flag.value
  try:
    rows = measure(config_flag.value, workdir, [int(b) for b in bins_flag.value], batches_flag.value, fit_flag.value)
  except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
    cli.fail(str(e))
  print(table(rows))
  with open(os.path.join(workdir, "gradients.json"), "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  _flags = define_flags()
  app.run(lambda argv: main(argv, *_flags), flags_parser=lambda argv: cli.parse(argv, _flags[0]))
