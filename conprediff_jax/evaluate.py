"""Sample quality of a model's EMA weights: generate `config.eval.num_samples` images, then score them.

Metrics, by what the run has:
  fd_digits, kid_digits,     the embedded digits (a classifier trained once, cached in the workdir; its features);
  precision_digits, recall_digits   improved precision and recall (k = 3) in the same features
  class_accuracy             no files needed
  fid, kid                   with config.eval.inception_weights (FID Inception-v3 as safetensors, see README) and
                             reference statistics: config.eval.reference_stats (.npz with mu, sigma), or computed
                             once from the training data and cached in the workdir
  inpaint_<mask>_<metric>    --mode=eval with config.eval.inpaint_masks: inpainting under each mask kind
                             (inpainting/run.py's protocol): masked_mse, and lpips, fid with their weights
"""

import json
import os

from absl import logging
import jax
import numpy as np
from flax import nnx

from conprediff_jax import atomic_files
from conprediff_jax import evaluation
from conprediff_jax import images as images_lib
from conprediff_jax import sampling
from conprediff_jax.inpainting import run as inpaint_run

LOWER_IS_BETTER = {"fd_digits": True, "kid_digits": True, "precision_digits": False, "recall_digits": False,
                   "fid": True, "kid": True, "class_accuracy": False, "reconstruction_mse": True}


class Evaluator:
  """Built once per run (compiles the sampler once); call it with EMA parameters and a step."""

  def __init__(self, model: sampling.TrainedModel, workdir: str):
    self.model, self.config, self.workdir = model, model.family.config, workdir
    self.sample_fn = model.sample_fn(self.config.eval.batch_size)
    self._digits = None
    self._inception = None

  def batches(self, ema_params, step: int):
    """The samples scored at `step`, batch by batch (see sampling.sample_batches)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), 2**31 - 2), step)
    if self.config.eval.get("sample_seed", 0):  # 0 keeps the keys of every figure scored before this option
      key = jax.random.fold_in(key, self.config.eval.sample_seed)
    return sampling.sample_batches(self.model.family, self.sample_fn, ema_params, self.model.first_stage_weights,
                                   key, self.config.eval.num_samples, self.config.eval.batch_size, progress=True)

  def __call__(self, ema_params, step: int) -> dict[str, float]:
    """Streams the samples through every metric's features; no more than a batch of images is held at once."""
    family = self.model.family
    model = nnx.merge(self.model.model_def, ema_params)
    digits, inception, family_totals = [], [], {}
    for offset, samples, asked in self.batches(ema_params, step):
      # Score what would be saved as images: quantised to uint8, as the reference FID implementations do.
      as_uint8 = images_lib.to_uint8(samples)
      if self.config.data.name == "digits":
        digits.append(self._digits_batch(as_uint8, asked.get("labels")))
      if self.config.eval.inception_weights:
        inception.append(self._inception_features(as_uint8))
      for k, v in family.score_batch(model, samples, offset).items():
        family_totals[k] = family_totals.get(k, 0) + v
    metrics = {}
    if digits:
      metrics.update(self._digits_metrics(digits))
    if inception:
      metrics.update(self._inception_metrics(np.concatenate(inception)))
    metrics.update(family.score(family_totals))
    return metrics

  def _digits_batch(self, images_uint8, labels) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, whether each sample shows the class it was asked for; None where no class was asked)."""
    if self._digits is None:
      self._digits = evaluation.DigitsMetric.load_or_train(os.path.join(self.workdir, "eval_cache"),
                                                           self.config.data.image_size, seed=0)
    images = images_uint8.astype(np.float32) / 127.5 - 1.0
    correct = None
    if labels is not None:  # over the samples whose request names a class
      named = labels >= 0
      correct = self._digits.classify(images[named]) == labels[named]
    return self._digits.features(images), correct

  def _digits_metrics(self, batches) -> dict[str, float]:
    features = np.concatenate([f for f, _ in batches])
    mu, sigma = evaluation.feature_statistics(features)
    precision, recall = evaluation.precision_recall(self._digits.reference_features, features)
    out = {"fd_digits": evaluation.frechet_distance(mu, sigma, *self._digits.reference_statistics),
           "kid_digits": self._digits.kid(features), "precision_digits": precision, "recall_digits": recall}
    if batches[0][1] is not None:
      correct = np.concatenate([c for _, c in batches])
      out["class_accuracy"] = float(np.mean(correct)) if len(correct) else float("nan")
    return out

  def _inception_features(self, images_uint8) -> np.ndarray:
    e = self.config.eval
    if self._inception is None:
      self._inception = evaluation.InceptionFeatures(e.inception_weights, expected_sha256=e.inception_sha256 or None)
    return self._inception.extract_features(images_uint8)

  def _inception_metrics(self, features) -> dict[str, float]:
    mu, sigma = evaluation.feature_statistics(features)
    ref_mu, ref_sigma, ref_features = self._reference()
    out = {"fid": evaluation.frechet_distance(mu, sigma, ref_mu, ref_sigma)}
    if ref_features is not None:
      size = min(1000, len(features), len(ref_features))
      out["kid"] = evaluation.kid(features, ref_features, subset_size=size)
    return out

  def _reference(self):
    """(mu, sigma, features or None) of the real data: from eval.reference_stats, or computed once and cached."""
    e = self.config.eval
    if e.reference_stats:
      mu, sigma = evaluation.load_statistics(e.reference_stats)
      return mu, sigma, None
    cache = os.path.join(self.workdir, "eval_cache", "reference_features.npy")
    if not os.path.exists(cache):
      from conprediff_jax import data as data_lib  # pylint: disable=g-import-not-at-top
      source = data_lib.make_source(self.config.data)
      count = min(len(source), e.reference_samples)
      real = source.get_batch(np.arange(count))["image"]
      features = self._inception.extract_features(images_lib.to_uint8(real))
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      np.save(cache, features, allow_pickle=False)
    features = np.load(cache, allow_pickle=False)
    mu, sigma = evaluation.feature_statistics(features)
    return mu, sigma, features


def is_better(metric: str, value: float, best: float | None) -> bool:
  if best is None:
    return np.isfinite(value)
  return value < best if LOWER_IS_BETTER[metric] else value > best


def write_results(workdir: str, step: int, metrics: dict[str, float]) -> str:
  path = os.path.join(workdir, f"eval_{step}.json")
  if jax.process_index() == 0:
    atomic_files.write_json(path, {"step": step, **metrics})
  return path


def evaluate(config, workdir: str) -> dict[str, float]:
  """--mode=eval: scores the EMA parameters of the workdir's latest checkpoint; writes eval_<step>.json."""
  from conprediff_jax.metric_writers import MetricWriter  # pylint: disable=g-import-not-at-top
  trained = sampling.load_latest_ema(config, workdir)
  step = trained.step
  with jax.set_mesh(trained.mesh):
    metrics = Evaluator(trained, workdir)(trained.weights, step)
  if config.eval.inpaint_masks:
    metrics.update(inpaint_run.protocol(config, trained))
  path = write_results(workdir, step, metrics)
  writer = MetricWriter(workdir)
  writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  writer.close()
  logging.info("step %d: %s (written to %s)", step, metrics, path)
  return {"step": step, **metrics}
