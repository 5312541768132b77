"""Sources: embedded digits, a TFDS array_record dataset built offline here, an image folder with bad files."""

import io
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conprediff_jax.data import FolderSource, make_source

pytestmark = pytest.mark.xdist_group("test_data_sources")  # on one worker: its module fixture runs once

REPO = pathlib.Path(__file__).resolve().parents[1]


def data_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name="digits", tfds_name="", data_dir="", split="train", image_size=16, channels=1,
      num_classes=10, strict=False))
  cfg.update(overrides)
  return cfg


def assert_one_line(excinfo, *needles: str) -> None:
  message = str(excinfo.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message


# ---------------------------------------------------------------- digits

def test_digits_shape_range_labels():
  source = make_source(data_config(image_size=16))
  assert len(source) == 1797
  example = source[0]
  assert example["image"].shape == (16, 16, 1) and example["image"].dtype == np.float32
  batch = source.get_batch(np.arange(len(source)))
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["image"].min() == -1.0 and batch["image"].max() > 0.9  # uses the whole range
  assert batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) == set(range(10))
  assert source.num_classes == 10


def test_digits_rgb_repeats_gray():
  source = make_source(data_config(image_size=8, channels=3))
  image = source[3]["image"]
  assert image.shape == (8, 8, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


@pytest.mark.parametrize("overrides, needle", [
    (dict(name="mnist"), "config.data.name"),
    (dict(channels=2), "config.data.channels"),
    (dict(image_size=0), "config.data.image_size"),
    (dict(num_classes=5), "config.data.num_classes=10"),
])
def test_bad_config_is_one_line(overrides, needle):
  with pytest.raises(ValueError) as excinfo:
    make_source(data_config(**overrides))
  assert_one_line(excinfo, needle)


def test_import_is_lazy_and_tf_free():
  code = ("import sys, time; t = time.perf_counter(); import conprediff_jax.data; "
          "dt = time.perf_counter() - t; heavy = [m for m in ('jax', 'grain', 'tensorflow_datasets', "
          "'tensorflow') if m in sys.modules]; print(heavy, dt)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  heavy, seconds = out.stdout.rsplit(" ", 1)
  assert heavy == "[]", out.stdout
  assert float(seconds) < 0.5


# ---------------------------------------------------------------- TFDS (array_record, offline, no TF)

_TFDS_IMAGES = np.random.default_rng(0).integers(0, 256, (20, 12, 12, 3), dtype=np.uint8)
_TFDS_LABELS = np.arange(20) % 3


class ConprediffTinyRgb(tfds.core.GeneratorBasedBuilder):
  """20 random 12x12 RGB images with labels; images go in as PIL (encoding numpy would need TF)."""

  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = tfds.core.Path(os.path.dirname(__file__))

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(12, 12, 3)),
        "label": tfds.features.ClassLabel(num_classes=3),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, (image, label) in enumerate(zip(_TFDS_IMAGES, _TFDS_LABELS)):
      yield i, {"image": Image.fromarray(image), "label": int(label)}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  ConprediffTinyRgb(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_values(tfds_dir):
  source = make_source(data_config(name="tfds", tfds_name="conprediff_tiny_rgb", data_dir=tfds_dir,
                                   image_size=12, channels=3))
  assert len(source) == 20 and source.num_classes == 3
  batch = source.get_batch(range(20))
  # TFDS shuffles records when preparing: match every record to the example it came from.
  pixels = np.rint((batch["image"] + 1.0) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(batch["image"], pixels / 127.5 - 1.0, atol=1e-6)
  origin = [next(j for j in range(20) if np.array_equal(p, _TFDS_IMAGES[j])) for p in pixels]
  assert sorted(origin) == list(range(20))
  np.testing.assert_array_equal(batch["label"], _TFDS_LABELS[origin])
  assert "tensorflow" not in sys.modules


def test_tfds_resized_gray(tfds_dir):
  source = make_source(data_config(name="tfds", tfds_name="conprediff_tiny_rgb", data_dir=tfds_dir,
                                   image_size=5, channels=1))
  image = source[7]["image"]
  assert image.shape == (5, 5, 1) and -1.0 <= image.min() and image.max() <= 1.0
  # An area-like average of random pixels sits near mid-grey; nearest sampling would not.
  assert abs(float(source.get_batch(range(20))["image"].mean())) < 0.1


@pytest.mark.parametrize("case, error, needle", [
    ("missing_dir", FileNotFoundError, "config.data.data_dir"),
    ("empty_dir", FileNotFoundError, "config.data.tfds_name='conprediff_tiny_rgb' is not prepared"),
    ("unknown_name", FileNotFoundError, "config.data.tfds_name='no_such_dataset_xyz'"),
    ("bad_split", ValueError, "config.data.split='validation'"),
    ("no_data_dir", ValueError, "config.data.data_dir is empty"),
])
def test_tfds_missing_data(tfds_dir, tmp_path, case, error, needle):
  settings = dict(name="tfds", tfds_name="conprediff_tiny_rgb", data_dir=tfds_dir, image_size=12, channels=3)
  settings.update({
      "missing_dir": dict(data_dir=str(tmp_path / "nope")),
      "empty_dir": dict(data_dir=str(tmp_path)),
      "unknown_name": dict(tfds_name="no_such_dataset_xyz", data_dir=str(tmp_path)),
      "bad_split": dict(split="validation"),
      "no_data_dir": dict(data_dir=""),
  }[case])
  with pytest.raises(error) as excinfo:
    make_source(data_config(**settings))
  assert_one_line(excinfo, needle)


# ---------------------------------------------------------------- image folder

def _png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> pathlib.Path:
  """cats/ 3 RGB PNGs + a grayscale one (wrong mode), dogs/ 2 RGB JPEGs (non-square) + a corrupt file."""
  rng = np.random.default_rng(1)
  (tmp_path / "cats").mkdir()
  (tmp_path / "dogs").mkdir()
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / "cats" / f"{i}.png")
  Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "cats" / "gray.png")  # mode L
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "dogs" / f"{i}.jpg")
  (tmp_path / "dogs" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
  (tmp_path / "dogs" / "notes.txt").write_text("ignored: not an image extension")
  return tmp_path


def test_folder_skips_and_counts_corrupt(image_folder):
  source = make_source(data_config(name="folder", data_dir=str(image_folder), image_size=8, channels=3))
  assert isinstance(source, FolderSource)
  assert len(source) == 6 and source.class_names == ["cats", "dogs"]
  assert [path for path, _ in source.skipped] == [str(image_folder / "dogs" / "corrupt.jpg")]
  batch = source.get_batch(range(len(source)))
  assert batch["image"].shape == (6, 8, 8, 3)
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  np.testing.assert_array_equal(batch["label"], [0, 0, 0, 0, 1, 1])
  gray = source[[p.name for p in source.paths].index("gray.png")]["image"]
  np.testing.assert_allclose(gray, 1.0)  # converted to RGB, white stays white


def test_folder_strict_raises(image_folder):
  with pytest.raises(ValueError) as excinfo:
    make_source(data_config(name="folder", data_dir=str(image_folder), image_size=8, channels=3, strict=True))
  assert_one_line(excinfo, "corrupt.jpg", "config.data.strict")


def test_folder_truncated_file_is_replaced_at_read_time(tmp_path):
  for i in range(3):
    Image.fromarray(np.full((9, 9), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
  whole = _png_bytes(Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)))
  (tmp_path / "1.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixel data cut off
  source = FolderSource(tmp_path, image_size=4, channels=1)
  assert len(source) == 3 and source.skipped == [] and source.num_classes == 1
  batch = source.get_batch([0, 1, 2, 1])
  assert batch["image"].shape == (4, 4, 4, 1)
  np.testing.assert_array_equal(batch["image"][1], batch["image"][2])  # 1 -> next readable, 2
  assert [p for p, _ in source.skipped] == [str(tmp_path / "1.png")]  # counted once
  with pytest.raises(ValueError) as excinfo:
    FolderSource(tmp_path, image_size=4, channels=1, strict=True)[1]
  assert_one_line(excinfo, "1.png", "undecodable")


def test_folder_missing_or_empty(tmp_path):
  with pytest.raises(FileNotFoundError) as excinfo:
    make_source(data_config(name="folder", data_dir=str(tmp_path / "nope")))
  assert_one_line(excinfo, "config.data.data_dir")
  with pytest.raises(ValueError) as excinfo:
    make_source(data_config(name="folder", data_dir=str(tmp_path)))
  assert_one_line(excinfo, "config.data.data_dir", "holds no images")
  with pytest.raises(ValueError) as excinfo:
    make_source(data_config(name="folder", data_dir=""))
  assert_one_line(excinfo, "config.data.data_dir is empty")
