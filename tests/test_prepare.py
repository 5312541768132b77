"""`python -m conprediff_jax.data.prepare`: an image folder becomes a TFDS dataset the trainer reads, cropped and
resized, labelled by folder, captions kept aligned with TFDS's record order, resumable, bad images skipped."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conprediff_jax.data import make_source, prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"cats": (0, 200, 0), "dogs": (0, 0, 200)}


def data_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": "tfds", "split": "train", "strict": False, "num_classes": 10,
                                    "captions": "", "text_embeddings_file": "", **overrides})


def _image(width, height, centre):
  """Red left/top margins, blue right/bottom ones, `centre` in the middle square: a center crop keeps only it."""
  pixels = np.zeros((height, width, 3), np.uint8)
  pixels[...] = (255, 0, 0)
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  pixels[top + side:, :] = pixels[:, left + side:] = (0, 0, 255)
  pixels[top:top + side, left:left + side] = centre
  return Image.fromarray(pixels)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "photos"
  for k, (cls, size) in enumerate([("cats", (30, 18)), ("cats", (16, 40)), ("dogs", (24, 24)), ("dogs", (50, 20))]):
    (root / cls).mkdir(parents=True, exist_ok=True)
    _image(*size, COLOURS[cls]).save(root / cls / f"{k}.png")
  (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  captions = ["a green one", "another green one", "a blue one", "a wide blue one", "never read"]
  (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
  np.savez(tmp_path / "embeddings.npz", embedding=np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3)),
           mask=np.ones((5, 2), bool))  # row i holds i
  return root


def test_a_folder_becomes_a_dataset_the_trainer_reads_and_preparing_resumes(folder, tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  argv = [f"--images={folder}", "--name=pets8", f"--data_dir={data_dir}", "--resolution=8",
          f"--captions={tmp_path / 'captions.txt'}", f"--embeddings={tmp_path / 'embeddings.npz'}", "--shards=2"]
  assert prepare.main(argv) == 0
  assert '"examples": 4, "skipped": 1, "classes": 2' in capsys.readouterr().out
  assert "broken.jpg" in (data_dir / "pets8_staging" / "skipped.txt").read_text()
  assert len([f for f in os.listdir(data_dir / "pets8" / "1.0.0") if ".array_record-" in f]) == 2

  source = make_source(data_config(tfds_name="pets8", data_dir=str(data_dir), image_size=8,
                                   channels=3, captions=str(data_dir / "pets8" / "1.0.0" / "captions.txt")))
  batch = source.get_batch(range(4))
  assert len(source) == 4 and source.num_classes == 2
  for image, label in zip(batch["image"], batch["label"]):  # the centre square alone, its folder's class
    want = np.asarray(COLOURS[["cats", "dogs"][label]]) / 127.5 - 1.0
    np.testing.assert_allclose(image, np.broadcast_to(want, image.shape), atol=0.02)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  records = tfds.data_source("pets8", split="train", data_dir=str(data_dir), download=False, try_gcs=False)
  captions = (tmp_path / "captions.txt").read_text().splitlines()
  written = (data_dir / "pets8" / "1.0.0" / "captions.txt").read_text().splitlines()
  assert written == [captions[int(records[r]["index"])] for r in range(4)]  # in record order
  assert sorted(written) == sorted(captions[:4])
  with np.load(data_dir / "pets8" / "1.0.0" / "text_embeddings.npz") as f:
    np.testing.assert_array_equal(f["embedding"][:, 0, 0], [int(records[r]["index"]) for r in range(4)])
    assert f["mask"].shape == (4, 2)

  # Interrupted while staging: only what is missing is staged again.
  staged = sorted((data_dir / "pets8_staging").glob("*.png"))
  before = {p.name: p.stat().st_mtime_ns for p in staged}
  os.remove(staged[1])
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(data_dir / "pets8")
  assert prepare.main(argv) == 0
  after = {p.name: p.stat().st_mtime_ns for p in (data_dir / "pets8_staging").glob("*.png")}
  assert after.keys() == before.keys()
  assert [n for n in before if after[n] != before[n]] == [staged[1].name]
  assert len(make_source(data_config(tfds_name="pets8", data_dir=str(data_dir), image_size=8,
                                     channels=3))) == 4


@pytest.mark.parametrize("flags,named", [
    (["--images={missing}"], "--images="),
    (["--labels={labels}"], "--labels="),
    (["--name=Bad-Name"], "--name="),
])
def test_bad_input_is_one_line(folder, tmp_path, flags, named):
  (tmp_path / "labels.txt").write_text("0\n1\n")  # two labels for five images
  base = {"--images": f"--images={folder}", "--name": "--name=pets", "--data_dir": f"--data_dir={tmp_path}/tfds",
          "--resolution": "--resolution=8"}
  for flag in flags:
    base[flag.split("=")[0]] = flag.format(missing=tmp_path / "nowhere", labels=tmp_path / "labels.txt")
  proc = subprocess.run([sys.executable, "-m", "conprediff_jax.data.prepare", *base.values()], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith(f"error: {named}") and proc.stderr.count("\n") == 1, proc.stderr
