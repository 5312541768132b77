"""LPIPS (conprediff_jax/evaluation/lpips.py) against the `lpips` package itself: the same random backbone weights,
the heads the package ships, random images of several sizes; the converter, the two-folder command and its errors."""

import json
import os
import sys
import types

import numpy as np
import pytest

from conprediff_jax.evaluation import convert_lpips_weights
from conprediff_jax.evaluation import lpips as ours

torch = pytest.importorskip("torch")


def _torchvision_standin():
  """torchvision's VGG16 (configuration "D") and AlexNet `features`, layer for layer, which is all `lpips` takes from
  torchvision; the registry's torchvision wheels do not load their compiled ops beside the pinned CPU torch."""
  nn = torch.nn

  def vgg16(pretrained=False):
    assert not pretrained, "nothing downloads"
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
      if v == "M":
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        cin = v
    return types.SimpleNamespace(features=nn.Sequential(*layers))

  def alexnet(pretrained=False):
    assert not pretrained, "nothing downloads"
    return types.SimpleNamespace(features=nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2)))

  models = types.ModuleType("torchvision.models")
  models.vgg16, models.alexnet = vgg16, alexnet
  package = types.ModuleType("torchvision")
  package.models = models
  return {"torchvision": package, "torchvision.models": models}


@pytest.fixture(scope="module")
def reference():
  """`lpips` with random torchvision backbones; per net, the package's model and our converted weights file."""
  saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.models")}
  sys.modules.update(_torchvision_standin())
  try:
    import lpips  # pylint: disable=g-import-not-at-top
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
  return lpips


def _converted(reference, net, folder):
  torch.manual_seed({"vgg": 0, "alex": 1}[net])
  model = reference.LPIPS(net=net, pnet_rand=True, verbose=False)  # the heads the package ships, a random backbone
  backbone = {f"features.{name.split('.', 1)[1]}": t for name, t in model.net.state_dict().items()}
  torch.save(backbone, folder / f"{net}.pth")
  path = folder / f"lpips_{net}.safetensors"
  convert_lpips_weights.convert(net, folder / f"{net}.pth", path, check_backbone=False)
  return model, path


def _torch_distance(model, x, y):
  with torch.no_grad():
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    return model(to_torch(x), to_torch(y)).numpy().reshape(-1)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_equals_the_reference_package_on_random_weights_and_images(reference, tmp_path, net):
  model, path = _converted(reference, net, tmp_path)
  distance = ours.distance_fn(ours.load(path))
  rng = np.random.default_rng(0)
  for shape in ((3, 64, 64, 3), (2, 32, 48, 3), (2, 71, 65, 3)):
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    for y in (np.clip(x + rng.normal(0, 0.2, shape), -1, 1).astype(np.float32),
              rng.uniform(-1, 1, shape).astype(np.float32)):
      want = _torch_distance(model, x, y)
      np.testing.assert_allclose(np.asarray(distance(x, y)), want, rtol=1e-5, atol=0)
      assert want.min() > 1e-3  # not vacuous: distinct images are apart
  grey = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)  # read as three equal channels
  other = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(distance(grey, other)),
                             _torch_distance(model, *(np.repeat(g, 3, -1) for g in (grey, other))), rtol=1e-5, atol=0)
  np.testing.assert_array_equal(np.asarray(distance(x, x)), 0.0)


def test_two_folders_paired_by_name_write_the_mean_and_each_pair(reference, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  model, path = _converted(reference, "alex", tmp_path)
  rng = np.random.default_rng(1)
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir(), b.mkdir()
  for name, size in (("0.png", 40), ("1.png", 40), ("2.png", 56)):
    for d in (a, b):
      Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(d / name)
  Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(a / "only_in_a.png")
  out = tmp_path / "distances.json"
  assert ours.main(["--net=alex", f"--backbone={path}", f"--out={out}", str(a), str(b)]) == 0
  result = json.loads(out.read_text())
  assert sorted(result["pairs"]) == ["0.png", "1.png", "2.png"]
  for name, got in result["pairs"].items():
    x, y = (ours.read_image(os.path.join(d, name))[None] for d in (a, b))
    assert got == pytest.approx(_torch_distance(model, x, y)[0], rel=1e-5)
  assert result["mean"] == pytest.approx(np.mean(list(result["pairs"].values())))
  captured = capsys.readouterr()
  assert f"{result['mean']:.6f}" in captured.out and "1 image(s) in one folder only" in captured.err


def test_bad_weights_and_folders_are_one_line(reference, tmp_path, capsys):
  _, path = _converted(reference, "vgg", tmp_path)
  folder = tmp_path / "images"
  folder.mkdir()
  cases = {  # the arguments: what the one line says
      ("--net=alex", f"--backbone={path}"): "holds LPIPS-vgg weights, not alex",
      ("--backbone=" + str(tmp_path / "vgg.pth"),): "does not start with 397923af (expected torchvision's vgg16",
      ("--backbone=" + str(tmp_path / "missing.safetensors"),): "no such LPIPS weights file",
      (f"--backbone={path}", str(tmp_path / "nowhere")): "no such folder",
      (f"--backbone={path}", str(folder)): "no image file name is in both",
  }
  for args, says in cases.items():
    dirs = [str(folder)] * (2 - sum(not a.startswith("--") for a in args))
    assert ours.main([*args, *dirs]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and says in err, err
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(path)
  tensors["lin2.model.1.weight"] = tensors["lin2.model.1.weight"][:, :128]
  save_file(tensors, tmp_path / "wrong.safetensors")
  with pytest.raises(ValueError, match=r"tensor lin2.model.1.weight has shape \(1, 128, 1, 1\), LPIPS-vgg needs"):
    ours.load(tmp_path / "wrong.safetensors", "vgg")


def test_inpainting_scores_lpips_and_fid_of_the_filled_images_against_the_originals(tmp_path, monkeypatch):
  """--mode=inpaint's scores (inpainting/run.py), with random LPIPS-AlexNet weights and, for FID, a stand-in for the
  Inception features (the pixels themselves), against the same figures computed here directly."""
  from conprediff_jax import evaluation  # pylint: disable=g-import-not-at-top
  from conprediff_jax.inpainting import run as inpaint_run  # pylint: disable=g-import-not-at-top
  from tests.conftest import random_lpips_weights, tiny_config  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  random_lpips_weights(tmp_path / "lpips_alex.safetensors", "alex")
  pixels = type("Pixels", (), {"__init__": lambda self, path, expected_sha256=None: None,
                               "extract_features": lambda self, x: x.reshape(len(x), -1)[:, :5].astype(np.float64)})
  monkeypatch.setattr(evaluation, "InceptionFeatures", pixels)
  config = tiny_config()
  config.eval.update(lpips_weights=str(tmp_path / "lpips_alex.safetensors"), inception_weights="weights",
                     batch_size=3)
  original = rng.integers(0, 256, (7, 40, 40, 1), np.uint8)
  filled = np.clip(original + rng.integers(-40, 40, original.shape), 0, 255).astype(np.uint8)
  scores = {name: fn(original, filled) for name, fn in inpaint_run.scorers(config).items()}
  distance = ours.distance_fn(ours.load(tmp_path / "lpips_alex.safetensors"))
  as_float = lambda x: x.astype(np.float32) / 127.5 - 1.0
  assert scores["lpips"] == pytest.approx(float(np.mean(distance(as_float(original), as_float(filled)))), rel=1e-5)
  statistics = lambda x: evaluation.feature_statistics(x.reshape(len(x), -1)[:, :5].astype(np.float64))
  assert scores["fid"] == pytest.approx(evaluation.frechet_distance(*statistics(filled), *statistics(original)))
  assert scores["lpips"] > 0 and scores["fid"] > 0
  config.eval.lpips_sha256 = "00000000"
  with pytest.raises(ValueError, match="does not match the expected"):  # before anything is inpainted
    inpaint_run.scorers(config)
