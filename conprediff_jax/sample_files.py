"""The files samples are written to (`--mode=sample`, and the end of training), from the inference weights alone.

Samples that fit in one batch of `config.sample.batch_size` go to one file; more are streamed batch by batch, so no
more than a batch is ever held in memory and an interrupted run resumes at the first batch it had not written:

  samples.png             a grid of the first batch (at most GRID_MAX images; one row per prompt or class)
  samples.npz             uint8 `images` [N, H, W, C] and what they were asked for (`labels`, `prompts`,
                          `prompt_index`; sampling.records), when N <= sample.batch_size
  samples/<offset>.npz    the same for each batch, named by the index of its first image (8 digits)
  samples/manifest.json   what the batches were drawn with (checkpoint step, seed, sample settings); a rerun with
                          anything else starts the folder afresh

Batch i is drawn from fold_in(key, i), so the streamed samples equal those of one long run, resumed or not.
"""

import glob
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from conprediff_jax import images as images_lib
from conprediff_jax import sampling

GRID_MAX = 256
FOLDER = "samples"


def write(trained: sampling.TrainedModel, workdir: str, writer=None) -> np.ndarray | None:
  """Samples `config.sample.num_images` into the files above; returns the first batch drawn here (uint8), None if
  every batch was already there. `writer` (a MetricWriter) also gets the grid."""
  config = trained.family.config
  num_images = config.sample.num_images
  batch = min(config.sample.get("batch_size", num_images), num_images)
  streaming = num_images > batch
  folder = os.path.join(workdir, FOLDER)
  first_batch = _resume_point(folder, _manifest(trained, batch)) if streaming else 0
  key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)
  drawn = None
  for offset, images, asked in sampling.sample_batches(
      trained.family, trained.sample_fn(batch), trained.weights, trained.first_stage_weights, key, num_images, batch,
      first_batch=first_batch, progress=streaming):
    images = images_lib.to_uint8(images)
    drawn = images if drawn is None else drawn
    if jax.process_index() != 0:
      continue
    if offset == 0:
      rows = asked.get("prompt_index", asked.get("labels"))  # a conditional grid: one prompt, or class, per row
      rows = None if rows is None else rows[:GRID_MAX]
      images_lib.save_grid(os.path.join(workdir, "samples.png"), images[:GRID_MAX], row_keys=rows)
      if writer is not None:
        writer.images(trained.step, "samples", images_lib.grid(images[:GRID_MAX], row_keys=rows))
    path = os.path.join(folder, f"{offset:08d}.npz") if streaming else os.path.join(workdir, "samples.npz")
    images_lib.save_npz(path, images=images, **asked)
  return drawn


def _manifest(trained: sampling.TrainedModel, batch: int) -> dict:
  config = trained.family.config
  return {"step": trained.step, "seed": config.seed, "batch_size": batch,
          "sample": json.loads(config.sample.to_json_best_effort())}


def _resume_point(folder: str, manifest: dict) -> int:
  """How many batches of this manifest's stream the folder already holds, in order (the same on every process);
  a folder drawn with other settings is emptied first."""
  done = 0
  if jax.process_index() == 0:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "manifest.json")
    saved = None
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved != manifest:
      for stale in glob.glob(os.path.join(folder, "*.npz")):
        os.remove(stale)
      with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    while os.path.exists(os.path.join(folder, f"{done * manifest['batch_size']:08d}.npz")):
      done += 1
  if jax.process_count() > 1:
    done = int(multihost_utils.broadcast_one_to_all(np.int32(done)))
  return done


