r"""The autoencoder recipe of LDM and VQGAN (taming-transformers' LPIPSWithDiscriminator and
VQLPIPSWithDiscriminator), shared by both first-stage families (`config.loss`):

    nll  = pixel(x, x') + perceptual_weight * LPIPS(x, x')
    loss = nll + (the family's KL or commitment term)
           + on(step) * lambda * adversarial_weight * -mean D(x')                        the generator's hinge term
           + on(step) * 1/2 (mean relu(1 - D(x)) + mean relu(1 + D(stop_gradient(x'))))  the discriminator's

pixel: the mean absolute error (`loss.pixel="l1"`, LDM's and VQGAN's) or the mean squared error ("l2"). on(step):
1 from `loss.disc_start` on, 0 before. lambda: VQGAN's adaptive weight, ||grad_W nll|| / (||grad_W g|| + 1e-4)
clipped to [0, 1e4] and held constant, W the kernel of the decoder's last layer and g the generator's term: it
balances the two terms' pull on the decoder whatever the scale of either.

One backward pass trains both networks: the generator's term reads the discriminator's parameters through
stop_gradient and the discriminator's loss reads the reconstruction through stop_gradient, so the gradient of the
sum is the autoencoder's loss's in the autoencoder's parameters and the discriminator's loss's in its own
(tests/test_adversarial.py checks both against each loss alone). The discriminator (models/discriminator.py) is the
family's training-only module (Family.auxiliary) with its own optimiser, Adam with taming's betas (0.5, 0.9) at
`loss.disc_learning_rate`; it is checkpointed with the run and never averaged, sampled or exported. LPIPS-VGG
(evaluation/lpips.py, weights in `loss.lpips_weights`) is read frozen as the family's first stage.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from conprediff_jax.config_validation import NON_NEGATIVE, POSITIVE, ConfigError
from conprediff_jax.evaluation import lpips
from conprediff_jax.families.base import FirstStage
from conprediff_jax.models.discriminator import PatchDiscriminator, output_size

ADAPTIVE_EPS, ADAPTIVE_MAX = 1e-4, 1e4  # taming's calculate_adaptive_weight
DISC_BETAS = (0.5, 0.9)                 # taming's discriminator optimiser
PERCEPTUAL_NET = "vgg"                  # LPIPS-VGG, as taming's perceptual loss
CHOICES = {"loss.pixel": ("l1", "l2")}
BOUNDS = {"loss.perceptual_weight": NON_NEGATIVE, "loss.adversarial_weight": NON_NEGATIVE,
          "loss.disc_start": NON_NEGATIVE, "loss.disc_layers": POSITIVE, "loss.disc_channels": POSITIVE,
          "loss.disc_learning_rate": POSITIVE}


def check_config(config, files: bool) -> None:
  l, size = config.loss, config.data.image_size
  if l.adversarial_weight > 0 and output_size(size, l.disc_layers) < 1:
    raise ConfigError("loss.disc_layers", f"{l.disc_layers} halvings leave no patch of a {size}x{size} image to "
                      "judge (a patch discriminator needs 2^layers * 3 <= the image side)",
                      "use fewer layers")
  if l.perceptual_weight > 0 and size < lpips.smallest_side(PERCEPTUAL_NET):
    raise ConfigError("loss.perceptual_weight", f"{l.perceptual_weight} on {size}x{size} images, smaller than "
                      f"LPIPS-{PERCEPTUAL_NET}'s {lpips.smallest_side(PERCEPTUAL_NET)}x"
                      f"{lpips.smallest_side(PERCEPTUAL_NET)}", "set config.loss.perceptual_weight=0")
  if l.perceptual_weight > 0 and files and not l.lpips_weights:
    raise ConfigError("loss.lpips_weights", "is empty with config.loss.perceptual_weight > 0",
                      "give the LPIPS-VGG weights (python -m conprediff_jax.evaluation.convert_lpips_weights, "
                      "docs/evaluation.md) or set config.loss.perceptual_weight=0")


def perceptual_network(config, abstract: bool) -> FirstStage | None:
  """LPIPS-VGG, frozen, where the perceptual term is on; its shapes alone for a compile without the file."""
  l = config.loss
  if l.perceptual_weight <= 0:
    return None
  model = nnx.eval_shape(lambda: lpips.LPIPS(PERCEPTUAL_NET)) if abstract and not l.lpips_weights else (
      lpips.load(l.lpips_weights, PERCEPTUAL_NET))
  graphdef, weights = nnx.split(model)
  return FirstStage(graphdef, weights.to_pure_dict(), l.lpips_weights or "(shapes)")


def discriminator(config, rngs: nnx.Rngs) -> PatchDiscriminator | None:
  l = config.loss
  if l.adversarial_weight <= 0:
    return None
  return PatchDiscriminator(image_channels=config.data.channels, channels=l.disc_channels, layers=l.disc_layers,
                            dtype=jnp.dtype(config.model.dtype), rngs=rngs)


def discriminator_optimizer(config) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip),
                     optax.adam(config.loss.disc_learning_rate, b1=DISC_BETAS[0], b2=DISC_BETAS[1]))


def kernel_gradient_norm(conv: nnx.Conv, inputs: jax.Array, output_gradient: jax.Array) -> jax.Array:
  """||d/dW <output_gradient, conv(inputs)>||: the gradient in the layer's kernel of a loss whose gradient in the
  layer's output is `output_gradient` (the layer is linear in its kernel, so nothing before it is differentiated)."""
  graphdef, state = nnx.split(conv)
  weights = state.to_pure_dict()
  apply = lambda kernel: nnx.merge(graphdef, {**weights, "kernel": kernel})(inputs)
  out, pullback = jax.vjp(apply, weights["kernel"])
  return jnp.linalg.norm(pullback(output_gradient.astype(out.dtype))[0].astype(jnp.float32))


def pixel_loss(kind: str, images: jax.Array, reconstruction: jax.Array) -> jax.Array:
  error = reconstruction - images
  return jnp.mean(jnp.abs(error)) if kind == "l1" else jnp.mean(jnp.square(error))


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def loss_terms(config, images, reconstruction, head_input, last_layer: nnx.Conv, perceptual, discriminator_,
               step) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The recipe's terms on one batch: (their sum, metrics), the family's own KL or commitment term not included.
  `head_input` is what the decoder's `last_layer` read; `perceptual` the LPIPS network or None; `discriminator_`
  the patch discriminator or None (then `step` is not read)."""
  l = config.loss

  def nll_of(reconstruction):
    pixel = pixel_loss(l.pixel, images, reconstruction)
    if perceptual is None:
      return pixel, {"loss_reconstruction": pixel}
    distance = jnp.mean(perceptual(images, reconstruction))
    return pixel + l.perceptual_weight * distance, {"loss_reconstruction": pixel, "lpips": distance}

  if discriminator_ is None:
    return nll_of(reconstruction)
  nll, nll_pullback, metrics = jax.vjp(nll_of, reconstruction, has_aux=True)

  graphdef, weights = nnx.split(discriminator_)
  frozen = nnx.merge(graphdef, jax.lax.stop_gradient(weights))  # the generator's term trains the decoder only
  generator, generator_pullback = jax.vjp(lambda r: -jnp.mean(frozen(r)), reconstruction)
  one = jnp.ones((), nll.dtype)
  pull = lambda pullback: jax.lax.stop_gradient(pullback(one)[0])
  adaptive = (kernel_gradient_norm(last_layer, head_input, pull(nll_pullback))
              / (kernel_gradient_norm(last_layer, head_input, pull(generator_pullback)) + ADAPTIVE_EPS))
  adaptive = jax.lax.stop_gradient(jnp.clip(adaptive, 0.0, ADAPTIVE_MAX))

  logits_real = discriminator_(images)
  logits_fake = discriminator_(jax.lax.stop_gradient(reconstruction))
  critic = hinge_discriminator_loss(logits_real, logits_fake)
  on = (step >= l.disc_start).astype(jnp.float32)
  total = nll + on * (adaptive * l.adversarial_weight * generator + critic)
  return total, {**metrics, "loss_generator": generator, "loss_discriminator": critic, "adaptive_weight": adaptive,
                 "logits_real": jnp.mean(logits_real), "logits_fake": jnp.mean(logits_fake)}
