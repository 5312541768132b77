"""FD-digits: a Frechet distance for the embedded digits set, in the features of a small classifier trained on it.

Inception features mean little on 16x16 grayscale digits, so the embedded default scores samples with a small
CNN trained once (seeded, seconds on a CPU) on 80% of scikit-learn's digits and cached as a pickle-free .npz
together with its accuracy on the other 20%. Its 128-d penultimate features give FD-digits against the statistics
of all 1,797 real digits; its logits give the class accuracy of class-conditional samples.
"""

import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from conprediff_jax import images as images_lib
from conprediff_jax.data.digits import load_digits
from conprediff_jax.evaluation import fid

FEATURE_DIM = 128
NUM_CLASSES = 10
TEST_FRACTION = 0.2
_FORMAT_VERSION = 1
_META_KEYS = ("meta.version", "meta.image_size", "meta.seed", "meta.test_accuracy")
_EVAL_BATCH = 256

# Training schedule: 660 Adam steps of 64 images; a few seconds on a 2-core CPU at 16x16.
_EPOCHS = 30
_BATCH = 64
_LEARNING_RATE = 2e-3


class DigitsClassifier(nnx.Module):
  """Three 3x3 convs (two with stride 2) -> Dense(128) features -> Dense(10) logits. Input [N, S, S, 1]."""

  def __init__(self, image_size: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.conv3 = nnx.Conv(32, 32, (3, 3), strides=2, rngs=rngs)
    side = math.ceil(math.ceil(image_size / 2) / 2)  # SAME padding rounds up at each stride.
    self.hidden = nnx.Linear(side * side * 32, FEATURE_DIM, rngs=rngs)
    self.head = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = jax.nn.relu(self.conv3(x))
    return jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


def split_indices(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded (train, test) index split of the real digits; the test part is held out from training."""
  perm = np.random.default_rng(seed).permutation(num)
  n_test = int(round(num * TEST_FRACTION))
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# ------------------------------------------------------------------------------------------------ training


def _train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, params: nnx.State,
                opt_state: optax.OptState, images: jax.Array, labels: jax.Array) -> tuple[nnx.State, optax.OptState]:

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _train(image_size: int, seed: int) -> DigitsClassifier:
  """Adam on the training split. A Python loop over a jitted step: on XLA:CPU, convolutions inside a lax.scan
  ran ~25x slower than the same step dispatched from Python (0.16 s vs 6 ms at 16x16)."""
  images, labels = load_digits(image_size)
  train_idx, _ = split_indices(len(images), seed)
  rng = np.random.default_rng(seed + 1)
  steps_per_epoch = len(train_idx) // _BATCH
  model = DigitsClassifier(image_size, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adam(_LEARNING_RATE)
  opt_state = tx.init(params)
  step = jax.jit(functools.partial(_train_step, graphdef, tx), donate_argnums=(0, 1))
  for _ in range(_EPOCHS):
    order = rng.permutation(train_idx)
    for i in range(steps_per_epoch):
      idx = order[i * _BATCH:(i + 1) * _BATCH]
      params, opt_state = step(params, opt_state, images[idx], labels[idx])
  return nnx.merge(graphdef, params)


# ------------------------------------------------------------------------------------------------ cache


def _cache_path(cache_dir: str | os.PathLike, image_size: int, seed: int) -> str:
  return os.path.join(os.fspath(cache_dir), f"digits_classifier_{image_size}px_seed{seed}.npz")


def _save(path: str, model: DigitsClassifier, image_size: int, seed: int, test_accuracy: float) -> None:
  arrays = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  arrays.update({
      "meta.version": np.asarray(_FORMAT_VERSION), "meta.image_size": np.asarray(image_size),
      "meta.seed": np.asarray(seed), "meta.test_accuracy": np.asarray(test_accuracy, np.float64)})
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  images_lib.save_npz(path, **arrays)  # concurrent processes never see a half-written cache


def _load(path: str, image_size: int, seed: int) -> tuple[DigitsClassifier, float]:
  """Reads a cached classifier; raises ValueError when the file is unreadable or made for other settings."""
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError("not an .npz archive")
    with data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"unreadable ({e})") from None
  if any(k not in arrays for k in _META_KEYS):
    raise ValueError("missing metadata")
  meta = (int(arrays["meta.version"]), int(arrays["meta.image_size"]), int(arrays["meta.seed"]))
  if meta != (_FORMAT_VERSION, image_size, seed):
    raise ValueError(f"made for (version, image_size, seed) = {meta}")
  model = nnx.eval_shape(lambda: DigitsClassifier(image_size, rngs=nnx.Rngs(0)))
  for p, var in nnx.to_flat_state(nnx.state(model)):
    key = ".".join(map(str, p))
    if key not in arrays or arrays[key].shape != var.shape:
      raise ValueError(f"tensor {key} missing or misshapen")
    var.set_value(jnp.asarray(arrays[key]))
  return model, float(arrays["meta.test_accuracy"])


# ------------------------------------------------------------------------------------------------ metric


class DigitsMetric:
  """FD-digits and class accuracy for images float [N, S, S, 1] in [-1, 1] at the classifier's image_size."""

  def __init__(self, model: DigitsClassifier, image_size: int, seed: int, test_accuracy: float):
    self.image_size = image_size
    self.seed = seed
    self.test_accuracy = test_accuracy  # On the held-out 20% of the real digits.
    graphdef, self._params = nnx.split(model)
    self._features = jax.jit(lambda p, x: nnx.merge(graphdef, p).features(x))
    self._logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    self._reference: np.ndarray | None = None

  @classmethod
  def load_or_train(cls, cache_dir: str | os.PathLike, image_size: int, seed: int = 0) -> "DigitsMetric":
    """Loads the classifier cached in `cache_dir`, or trains it (seconds) and caches it there."""
    path = _cache_path(cache_dir, image_size, seed)
    if os.path.exists(path):
      try:
        model, accuracy = _load(path, image_size, seed)
        return cls(model, image_size, seed, accuracy)
      except ValueError as e:
        logging.warning("retraining the digits classifier: cache %s is %s", path, e)
    model = _train(image_size, seed)
    metric = cls(model, image_size, seed, float("nan"))
    images, labels = load_digits(image_size)
    _, test_idx = split_indices(len(images), seed)
    metric.test_accuracy = metric.accuracy(images[test_idx], labels[test_idx])
    _save(path, model, image_size, seed, metric.test_accuracy)
    return metric

  def held_out(self) -> tuple[np.ndarray, np.ndarray]:
    """The real digits (images, labels) the classifier never trained on."""
    images, labels = load_digits(self.image_size)
    _, test_idx = split_indices(len(images), self.seed)
    return images[test_idx], labels[test_idx]

  def _batched(self, fn, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    want = (self.image_size, self.image_size, 1)
    if images.ndim != 4 or images.shape[1:] != want:
      raise ValueError(f"images must be [N, {want[0]}, {want[1]}, 1] in [-1, 1], got shape {images.shape}")
    out = []
    for start in range(0, len(images), _EVAL_BATCH):
      batch = images[start:start + _EVAL_BATCH]
      n = len(batch)
      if n < _EVAL_BATCH:  # One compiled shape for every call.
        batch = np.concatenate([batch, np.zeros((_EVAL_BATCH - n,) + want, np.float32)])
      out.append(np.asarray(fn(self._params, batch))[:n])
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

  def features(self, images: np.ndarray) -> np.ndarray:
    """Penultimate features, float64 [N, 128]."""
    return self._batched(self._features, images).astype(np.float64)

  def statistics(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return fid.feature_statistics(self.features(images))

  @property
  def reference_features(self) -> np.ndarray:
    """The features of all 1,797 real digits at this image size."""
    if self._reference is None:
      self._reference = self.features(load_digits(self.image_size)[0])
    return self._reference

  @property
  def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of all 1,797 real digits at this image size."""
    return fid.feature_statistics(self.reference_features)

  def kid(self, features: np.ndarray) -> float:
    """KID-digits: KID (cubic-kernel MMD^2, subsets of up to 1,000) between `features` and the real digits', both
    centred on the real digits' mean and divided by their one overall deviation. The kernel (x.y / d + 1)^3 wants
    features of about unit scale, as Inception's are; these have norms near 60, and raw they gave estimates of -22
    to +37 for five sample sets of one model. (One scale for all features keeps their geometry; per-feature
    scaling would blow up the near-constant ones.)"""
    ref = self.reference_features
    mean = ref.mean(0)
    scale = np.std(ref - mean)
    return fid.kid((features - mean) / scale, (ref - mean) / scale, subset_size=min(1000, len(features)))

  def fd(self, images: np.ndarray, reference: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """FD-digits of `images` against `reference` (mu, sigma), by default the real digits' statistics."""
    mu, sigma = self.statistics(images)
    ref_mu, ref_sigma = self.reference_statistics if reference is None else reference
    return fid.frechet_distance(mu, sigma, ref_mu, ref_sigma)

  def classify(self, images: np.ndarray) -> np.ndarray:
    """Predicted digit classes, int32 [N]."""
    return self._batched(self._logits, images).argmax(-1).astype(np.int32)

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` classified as `labels` (for class-conditional samples)."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
      raise ValueError(f"labels must be [{len(images)}], got shape {labels.shape}")
    return float(np.mean(self.classify(images) == labels)) if len(labels) else float("nan")
