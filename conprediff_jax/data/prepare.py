r"""A local image folder -> a TFDS array_record dataset that `config.data.name="tfds"` reads; no TensorFlow.

    python -m conprediff_jax.data.prepare --images=~/data/celeba_hq --name=celebahq256 --resolution=256 \
        --data_dir=~/tensorflow_datasets [--labels=labels.txt] [--captions=captions.txt] [--shards=16]

Then train with `--config.data.name=tfds --config.data.tfds_name=celebahq256
--config.data.data_dir=~/tensorflow_datasets --config.data.image_size=256` (docs/datasets.md: each dataset).

1. Stage (resumable): every image under --images, in sorted path order, is decoded, center-cropped to a square
   (`--crop=none` resizes the whole image instead) and resized with Lanczos to --resolution, then saved as PNG in
   `<data_dir>/<name>_staging/`. A rerun skips what is staged, so an interrupted preparation resumes; unreadable
   images are skipped, counted and listed in `skipped.txt` there.
2. Build: the staged images become the TFDS dataset `<name>` (split "train"; features `image`, `label`, `index`:
   the image's position in sorted path order) as --shards array_record files for parallel reads.
3. Labels: one integer per line of --labels (line i for the i-th image in sorted order), else the first folder
   below --images names the class (sorted names -> 0, 1, ...), else 0. --captions (one per line) and
   --embeddings (.npz with `embedding` [N, L, D], `mask` [N, L]) are given in the same order; they are rewritten
   in the dataset's record order (TFDS shuffles records) as `captions.txt` and `text_embeddings.npz` beside it,
   for `config.data.captions` and `config.data.text_embeddings_file`.
"""

import argparse
import json
import os
import pathlib
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from conprediff_jax import cli
from conprediff_jax.data import folder_source

VERSION = "1.0.0"


def source_images(root: pathlib.Path) -> list[pathlib.Path]:
  images = list(folder_source.walk_images(root))
  if not images:
    raise FileNotFoundError(f"--images={root}: no images found (looked for {sorted(folder_source.IMAGE_EXTENSIONS)})")
  return images


def square(image: Image.Image, resolution: int, crop: str) -> Image.Image:
  """RGB, center-cropped to a square (or not, with crop="none"), resized with Lanczos to resolution^2."""
  image = image.convert("RGB")
  if crop == "center":
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
  return image.resize((resolution, resolution), Image.LANCZOS)


def stage(images: list[pathlib.Path], staging: pathlib.Path, resolution: int, crop: str) -> list[int]:
  """Writes staging/<i>.png for each readable image i (skipping those already there); returns the staged indices."""
  staging.mkdir(parents=True, exist_ok=True)
  skipped = []
  for i, path in enumerate(tqdm(images, desc="staging", unit="img")):
    target = staging / f"{i:08d}.png"
    if target.exists():
      continue
    try:
      with Image.open(path) as image:
        small = square(image, resolution, crop)
    except folder_source.DECODE_ERRORS as e:
      skipped.append(f"{path}\t{folder_source.describe(e)}")
      continue
    tmp = staging / f"{i:08d}.tmp.png"  # renamed when whole: a kill leaves no half-written image behind
    small.save(tmp)
    os.replace(tmp, target)
  with open(staging / "skipped.txt", "w", encoding="utf-8") as f:  # retried on every run: this run's list
    f.write("".join(f"{line}\n" for line in skipped))
  return sorted(int(p.stem) for p in staging.glob("*.png") if not p.stem.endswith(".tmp"))


def read_labels(path: str | None, images: list[pathlib.Path], root: pathlib.Path) -> tuple[np.ndarray, list[str]]:
  """(int labels [N], class names) from the labels file, or from the first folder level, or all 0."""
  if path:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      labels = np.asarray([int(line) for line in f.read().split()], np.int64)
    if len(labels) != len(images):
      raise ValueError(f"--labels={path} has {len(labels)} labels for {len(images)} images")
    if labels.min() < 0:
      raise ValueError(f"--labels={path}: labels must be >= 0, found {labels.min()}")
    return labels, [str(k) for k in range(int(labels.max()) + 1)]
  folders = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "unlabelled" for p in images]
  names = sorted(set(folders))
  return np.asarray([names.index(f) for f in folders], np.int64), names


def _read_lines(path: str, count: int, flag: str) -> list[str]:
  with open(os.path.expanduser(path), encoding="utf-8") as f:
    lines = f.read().splitlines()
  if len(lines) != count:
    raise ValueError(f"{flag}={path} has {len(lines)} lines for {count} images")
  return lines


def build(name: str, data_dir: str, staging: pathlib.Path, indices: list[int], labels: np.ndarray,
          class_names: list[str], resolution: int, shards: int | None):
  """The TFDS dataset from the staged images (only TFDS's writers are used; nothing is downloaded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow: only when building
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top

  dataset_name = name
  with registered.skip_registration():  # a dataset named at run time: read back from files, like any prepared one
    class Prepared(tfds.core.GeneratorBasedBuilder):
      name = dataset_name
      # A one-part module: TFDS then looks for no code or checksums beside it (a package path would make it
      # import importlib_resources, which nothing else needs).
      __module__ = dataset_name
      VERSION = tfds.core.Version(VERSION)
      pkg_dir_path = tfds.core.Path(os.path.dirname(__file__))

      def _info(self):
        return self.dataset_info_from_configs(
            description=f"Prepared by conprediff_jax.data.prepare from {len(indices)} images at {resolution}px.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(resolution, resolution, 3)),
                "label": tfds.features.ClassLabel(names=class_names),
                "index": tfds.features.Scalar(dtype=np.int64)}))

      def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

      def _generate_examples(self):
        for i in indices:
          with Image.open(staging / f"{i:08d}.png") as image:
            yield i, {"image": image.copy(), "label": int(labels[i]), "index": i}

  Prepared(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=shards, try_download_gcs=False))


def record_order(name: str, data_dir: str) -> np.ndarray:
  """The source index of each record of the built split, in record order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  records = tfds.data_source(name, split="train", data_dir=data_dir, download=False, try_gcs=False)
  return np.asarray([int(records[i]["index"]) for i in tqdm(range(len(records)), desc="record order")], np.int64)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--images", required=True, help="folder of images (searched recursively)")
  p.add_argument("--name", required=True, help="TFDS dataset name, e.g. celebahq256 (lower case, digits, _)")
  p.add_argument("--data_dir", required=True, help="TFDS data_dir to write the dataset into")
  p.add_argument("--resolution", type=int, required=True)
  p.add_argument("--crop", choices=("center", "none"), default="center")
  p.add_argument("--labels", help="one integer label per line, in sorted image-path order")
  p.add_argument("--captions", help="one caption per line, in sorted image-path order")
  p.add_argument("--embeddings", help=".npz with embedding [N, L, D] and mask [N, L], in sorted image-path order")
  p.add_argument("--shards", type=int, default=None, help="array_record files (default: TFDS's, by size)")
  args = p.parse_args(argv)
  try:
    return prepare(args)
  except (FileNotFoundError, ValueError) as e:
    cli.fail(str(e))


def prepare(args) -> int:
  if not args.name.replace("_", "").isalnum() or args.name != args.name.lower() or args.name[0].isdigit():
    raise ValueError(f"--name={args.name!r}: use lower-case letters, digits and _, starting with a letter")
  if args.resolution < 1:
    raise ValueError(f"--resolution={args.resolution}: must be positive")
  root = pathlib.Path(args.images).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"--images={args.images} is not a folder")
  data_dir = os.path.expanduser(args.data_dir)
  images = source_images(root)
  labels, class_names = read_labels(args.labels, images, root)  # checked before the long part
  captions = _read_lines(args.captions, len(images), "--captions") if args.captions else None
  embeddings = None
  if args.embeddings:
    with np.load(os.path.expanduser(args.embeddings), allow_pickle=False) as f:
      embeddings = {k: f[k] for k in ("embedding", "mask")}
    if any(len(v) != len(images) for v in embeddings.values()):
      raise ValueError(f"--embeddings={args.embeddings} has {len(embeddings['embedding'])} rows for "
                       f"{len(images)} images")
  staging = pathlib.Path(data_dir, f"{args.name}_staging")
  indices = stage(images, staging, args.resolution, args.crop)
  if not indices:
    raise ValueError(f"--images={args.images}: none of the {len(images)} images could be read "
                     f"(see {staging / 'skipped.txt'})")
  build(args.name, data_dir, staging, indices, labels, class_names, args.resolution, args.shards)
  out = pathlib.Path(data_dir, args.name, VERSION)
  order = record_order(args.name, data_dir)
  if captions is not None:
    (out / "captions.txt").write_text("\n".join(captions[i] for i in order) + "\n", encoding="utf-8")
  if embeddings is not None:
    np.savez(out / "text_embeddings.npz", **{k: v[order] for k, v in embeddings.items()})
  summary = {"dataset": args.name, "data_dir": data_dir, "examples": len(indices),
             "skipped": len(images) - len(indices), "classes": len(class_names), "resolution": args.resolution}
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
