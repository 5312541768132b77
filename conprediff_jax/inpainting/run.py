"""`--mode=inpaint`: fill the masked part of real images with the workdir's latest EMA model.

Images come from `config.inpaint.images` (a folder of images already at the model's size) or, when that is empty,
from the embedded digits (`config.inpaint.split`). Masks come from `config.inpaint.masks` (mask images, white = to
fill) or are generated (`config.inpaint.mask`, seeded by config.seed). Writes into the workdir:

  inpaint.png   the originals, the masked inputs (unknown pixels grey) and the filled images, in rows of 16
  inpaint.npz   uint8 `original`, `filled` [N, H, W, C] and bool `known` [N, H, W]
  inpaint.json  masked_mse (mean squared error to the originals over the filled pixels, images in [-1, 1]),
                known_max_abs_error (over the kept pixels: 0 when they come back exactly), and, scored on the
                images as saved (uint8) against the originals: lpips (the mean over images, with
                config.eval.lpips_weights) and fid (with config.eval.inception_weights; over few images a rough
                figure)
"""

import os
import pathlib

import jax
import numpy as np

from conprediff_jax import atomic_files, evaluation, parallel, sampling
from conprediff_jax import images as images_lib
from conprediff_jax.data import folder_source, imaging
from conprediff_jax.data.digits import load_digits, split_rows
from conprediff_jax.evaluation import lpips
from conprediff_jax.inpainting import masks

IMAGES_PER_ROW = 16


def load_images(config) -> np.ndarray:
  """float32 [N, S, S, C] in [-1, 1]: the first `inpaint.num_images` images of the folder or digits split."""
  p, d = config.inpaint, config.data
  if not p.images:
    x, _ = load_digits(d.image_size)
    return x[split_rows(p.split, len(x))][:p.num_images]
  root = os.path.expanduser(p.images)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.inpaint.images={p.images!r} is not a folder; give a folder of images, or "
                            "leave it empty for the embedded digits")
  paths = list(folder_source.walk_images(pathlib.Path(root)))[:p.num_images]
  if not paths:
    raise ValueError(f"config.inpaint.images={p.images!r} holds no image files")
  size = d.image_size
  wrong_size = (f"the model's images are {size}x{size}; resize (or crop) them to that size first: inpainting does "
                "not rescale, so that the known pixels come back unchanged")
  out = [folder_source.decode_at_size(path, size, lambda image: imaging.to_model_image(image, size, d.channels),
                                      name=str(path), setting="config.inpaint.images", wrong_size=wrong_size)
         for path in paths]
  return np.stack(out)


def load_known(config, count: int) -> np.ndarray:
  """bool [N, S, S]: True where the pixel is kept."""
  p, size = config.inpaint, config.data.image_size
  if p.masks:
    return masks.read_folder(p.masks, count, size)
  return masks.generate(p.mask, count, size, config.seed)


def inpaint(config, workdir: str) -> dict[str, float]:
  images = load_images(config)
  known = load_known(config, len(images))
  scores = scorers(config)
  trained = sampling.load_latest_ema(config, workdir)
  filled = inpainter(config, trained, len(images))(images, known)
  metrics = {"step": trained.step, "num_images": len(images), **score(images, filled, known, scores)}
  if jax.process_index() == 0:
    original, result = images_lib.to_uint8(images), images_lib.to_uint8(filled)
    masked = images_lib.to_uint8(np.where(known[..., None], images, 0.0))
    block = np.arange(len(images)) // IMAGES_PER_ROW  # rows of 16: originals, masked inputs, results, repeated
    rows = np.concatenate([3 * block, 3 * block + 1, 3 * block + 2])
    images_lib.save_grid(os.path.join(workdir, "inpaint.png"), np.concatenate([original, masked, result]),
                         row_keys=rows)
    images_lib.save_npz(os.path.join(workdir, "inpaint.npz"), original=original, filled=result, known=known)
    atomic_files.write_json(os.path.join(workdir, "inpaint.json"), metrics)
  return metrics


def protocol(config, trained: sampling.TrainedModel) -> dict[str, float]:
  """--mode=eval's inpainting scores: config.inpaint's images filled under each mask kind of
  `config.eval.inpaint_masks` (generated from config.seed, the same masks every time), as `inpaint_<kind>_<metric>`."""
  images, scores, out = load_images(config), scorers(config), {}
  fill = inpainter(config, trained, len(images))
  for kind in config.eval.inpaint_masks:
    known = masks.generate(kind, len(images), config.data.image_size, config.seed)
    out.update({f"inpaint_{kind}_{k}": v for k, v in score(images, fill(images, known), known, scores).items()})
  return out


def inpainter(config, trained: sampling.TrainedModel, count: int):
  """`(images, known) -> filled` (host arrays) by the trained model's family, compiled once."""
  fn = jax.jit(trained.family.inpainter(trained.model_def, trained.first_stage_def, count))
  on_mesh = lambda x: jax.device_put(x, parallel.replicated(trained.mesh))
  key = jax.random.fold_in(jax.random.key(config.seed), 3)

  def fill(images, known):
    with jax.set_mesh(trained.mesh):
      return parallel.to_host(fn(trained.weights, trained.first_stage_weights, on_mesh(key), on_mesh(images),
                                 on_mesh(known[..., None])))
  return fill


def score(images: np.ndarray, filled: np.ndarray, known: np.ndarray, scores: dict) -> dict[str, float]:
  """masked_mse over the filled pixels, known_max_abs_error over the kept ones, and `scores` (`scorers`) on the
  images as saved (uint8)."""
  error = np.square(filled - images)
  unknown = np.broadcast_to(~known[..., None], images.shape)
  out = {"masked_mse": float(error[unknown].mean()) if unknown.any() else 0.0,
         "known_max_abs_error": float(np.abs(filled - images)[~unknown].max()) if (~unknown).any() else 0.0}
  original, result = images_lib.to_uint8(images), images_lib.to_uint8(filled)
  return {**out, **{name: fn(original, result) for name, fn in scores.items()}}


def scorers(config) -> dict:
  """LPIPS and FID of filled images against their originals (uint8 [N, H, W, C], whole images, as the paper's
  inpainting tables score them), each where its weights are configured; loaded before anything is computed."""
  e, out = config.eval, {}
  if e.lpips_weights:
    distance = lpips.distance_fn(lpips.load(e.lpips_weights, expected_sha256=e.lpips_sha256 or None), e.batch_size)
    out["lpips"] = lambda original, filled: float(np.mean(distance(original, filled)))
  if e.inception_weights:
    inception = evaluation.InceptionFeatures(e.inception_weights, expected_sha256=e.inception_sha256 or None)
    statistics = lambda x: evaluation.feature_statistics(inception.extract_features(x))
    out["fid"] = lambda original, filled: evaluation.frechet_distance(*statistics(filled), *statistics(original))
  return out
