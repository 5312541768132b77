"""Sampling at scale: samples streamed to disk a batch per file, resumed bitwise, and evaluation by map-reduce over
the batches scoring what one batch would."""

import os

import jax
import numpy as np

from flax import nnx

from conprediff_jax import evaluate, evaluation, sampling, train
from conprediff_jax.evaluation import digits_metric
from conprediff_jax.data.digits import load_digits

from conftest import make_random_workdir, tiny_config


def untrained_digits_classifier(monkeypatch, image_size: int):
  """Evaluators get a digits classifier with random weights: these tests check how features are gathered, not what
  they are, and training the classifier costs seconds."""
  classifier = digits_metric.DigitsClassifier(image_size, rngs=nnx.Rngs(0))
  monkeypatch.setattr(evaluation.DigitsMetric, "load_or_train",
                      lambda *_, **__: digits_metric.DigitsMetric(classifier, image_size, 0, 0.0))


def test_streamed_samples_are_one_run_resumed_bitwise_and_restarted_on_other_settings(tmp_path, config):
  make_random_workdir(str(tmp_path), config)
  config.sample.num_images, config.sample.batch_size = 2, 2
  train.sample(config, str(tmp_path))  # samples.npz: the 2 images of one batch
  one_batch = np.load(tmp_path / "samples.npz")["images"]

  config.sample.num_images = 5
  train.sample(config, str(tmp_path))
  folder = tmp_path / "samples"
  names = ["00000000.npz", "00000002.npz", "00000004.npz"]
  assert sorted(os.listdir(folder)) == [*names, "manifest.json"]
  streamed = [np.load(folder / n)["images"] for n in names]
  assert [len(s) for s in streamed] == [2, 2, 1]
  np.testing.assert_array_equal(streamed[0], one_batch)  # batch i is drawn from (key, i): the same as alone
  assert len({s.tobytes() for s in streamed}) == 3

  # Killed after the first batch: the rerun keeps it and draws the rest exactly as before.
  first = os.stat(folder / names[0])
  for n in names[1:]:
    os.remove(folder / n)
  train.sample(config, str(tmp_path))
  assert os.stat(folder / names[0]).st_mtime_ns == first.st_mtime_ns
  for n, before in zip(names, streamed):
    np.testing.assert_array_equal(np.load(folder / n)["images"], before)

  # Other settings: the folder is drawn afresh, not mixed.
  config.sample.steps = 3
  train.sample(config, str(tmp_path))
  assert sorted(os.listdir(folder)) == [*names, "manifest.json"]
  assert not np.array_equal(np.load(folder / names[0])["images"], streamed[0])


def test_eval_streams_batches_to_the_metrics_of_one_batch(tokenizer_workdir, monkeypatch):
  """The tokenizer's eval (FD-digits, class accuracy, reconstruction error, codebook use) over 8 held-out digits,
  in batches of 3 against one batch of 8; reconstruction error also against NumPy on the samples. The digits
  classifier is left untrained (what is checked is how features are gathered, not what they are)."""
  config = tiny_config("autoencoder")
  untrained_digits_classifier(monkeypatch, config.data.image_size)
  trained = sampling.load_latest_ema(config, tokenizer_workdir)
  with jax.set_mesh(trained.mesh):
    whole = evaluate.Evaluator(trained, tokenizer_workdir)(trained.weights, trained.step)
    config.eval.batch_size = 3
    evaluator = evaluate.Evaluator(trained, tokenizer_workdir)
    streamed = evaluator(trained.weights, trained.step)
    samples = np.concatenate([images for _, images, _ in evaluator.batches(trained.weights, trained.step)])
  assert sorted(whole) == ["class_accuracy", "codebook_perplexity", "codebook_usage", "fd_digits", "kid_digits",
                           "precision_digits", "recall_digits", "reconstruction_mse"]
  for k, v in whole.items():
    np.testing.assert_allclose(streamed[k], v, rtol=1e-6, err_msg=k)
  originals = load_digits(config.data.image_size)[0][:8]
  np.testing.assert_allclose(whole["reconstruction_mse"], np.mean(np.square(samples - originals)), rtol=1e-6)


def test_noise_floor_scores_one_checkpoint_on_independent_sample_sets(tmp_path, config, monkeypatch):
  from conprediff_jax.experiments import noise_floor  # pylint: disable=g-import-not-at-top
  untrained_digits_classifier(monkeypatch, config.data.image_size)
  make_random_workdir(str(tmp_path), config)
  config.eval.batch_size = 4
  rows = noise_floor.measure(config, str(tmp_path), [8], repeats=2)
  (row,) = rows
  fd = [run["fd_digits"] for run in row["runs"]]
  assert row["num_samples"] == 8 and len(fd) == 2 and fd[0] != fd[1]  # other samples, other scores
  assert row["fd_digits_mean"] == np.mean(fd) and row["fd_digits_std"] == np.std(fd, ddof=1)
  assert noise_floor.table(rows).splitlines()[2].startswith("| 8 | ")


def test_noise_floor_pairs_two_runs_by_sample_set():
  from conprediff_jax.experiments import noise_floor  # pylint: disable=g-import-not-at-top
  run = lambda fd, kid: {"fd_digits": fd, "kid_digits": kid}
  mine = [{"num_samples": 8, "runs": [run(10.0, 0.1), run(12.0, 0.3), run(11.0, 0.2)]}]
  theirs = [{"num_samples": 8, "runs": [run(9.0, 0.1), run(12.5, 0.1), run(10.0, 0.0)]}]
  (row,) = noise_floor.paired(mine, theirs)
  assert row["differences"]["fd_digits"] == [1.0, -0.5, 1.0]
  np.testing.assert_allclose([row["fd_digits_mean"], row["fd_digits_std"]], [0.5, np.std([1, -0.5, 1], ddof=1)])
