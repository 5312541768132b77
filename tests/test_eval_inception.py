"""The Flax FID Inception matches an independent PyTorch forward pass with random weights and random BN stats.

The reference below is written from the published architecture (pytorch-fid's FID Inception: FIDInceptionA/C/E
blocks with count_include_pad=False average pools, max pool in Mixed_7c) with plain torch.nn modules; its
state_dict goes through the real converter (.pth -> .safetensors) and the real loader.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
nn = torch.nn
F = torch.nn.functional

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top,wrong-import-position

from conprediff_jax.evaluation import convert_fid_weights  # pylint: disable=wrong-import-position
from conprediff_jax.evaluation import inception  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.xdist_group("test_eval_inception")  # on one worker: its module fixture runs once

SIZE = 139  # Mixed_7b/c see a 3x3 map here (75 would leave 1x1, hiding pooling/padding mistakes).


# ------------------------------------------------------------------------------------------------ reference


class TConv(nn.Module):

  def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def t_avg(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class TA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TConv(cin, 64, 1)
    self.branch5x5_1 = TConv(cin, 48, 1)
    self.branch5x5_2 = TConv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = TConv(cin, 64, 1)
    self.branch3x3dbl_2 = TConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TConv(96, 96, 3, padding=1)
    self.branch_pool = TConv(cin, pool_features, 1)

  def forward(self, x):
    return torch.cat([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(t_avg(x)),
    ], 1)


class TB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TConv(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = TConv(cin, 64, 1)
    self.branch3x3dbl_2 = TConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TConv(96, 96, 3, stride=2)

  def forward(self, x):
    return torch.cat([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        F.max_pool2d(x, 3, stride=2),
    ], 1)


class TC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TConv(cin, 192, 1)
    self.branch7x7_1 = TConv(cin, c7, 1)
    self.branch7x7_2 = TConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = TConv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TConv(cin, c7, 1)
    self.branch7x7dbl_2 = TConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TConv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = TConv(cin, 192, 1)

  def forward(self, x):
    d = self.branch7x7dbl_1(x)
    d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(d))))
    return torch.cat([
        self.branch1x1(x),
        self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
        d,
        self.branch_pool(t_avg(x)),
    ], 1)


class TD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TConv(cin, 192, 1)
    self.branch3x3_2 = TConv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = TConv(cin, 192, 1)
    self.branch7x7x3_2 = TConv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TConv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TConv(192, 192, 3, stride=2)

  def forward(self, x):
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class TE(nn.Module):

  def __init__(self, cin, use_max):
    super().__init__()
    self.use_max = use_max
    self.branch1x1 = TConv(cin, 320, 1)
    self.branch3x3_1 = TConv(cin, 384, 1)
    self.branch3x3_2a = TConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = TConv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TConv(cin, 448, 1)
    self.branch3x3dbl_2 = TConv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = TConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TConv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = TConv(cin, 192, 1)

  def forward(self, x):
    h = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(h), self.branch3x3_2b(h)], 1)
    h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], 1)
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.use_max else t_avg(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TInception(nn.Module):

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TConv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = TConv(32, 32, 3)
    self.Conv2d_2b_3x3 = TConv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = TConv(64, 80, 1)
    self.Conv2d_4a_3x3 = TConv(80, 192, 3)
    self.Mixed_5b = TA(192, 32)
    self.Mixed_5c = TA(256, 64)
    self.Mixed_5d = TA(288, 64)
    self.Mixed_6a = TB(288)
    self.Mixed_6b = TC(768, 128)
    self.Mixed_6c = TC(768, 160)
    self.Mixed_6d = TC(768, 160)
    self.Mixed_6e = TC(768, 192)
    self.Mixed_7a = TD(768)
    self.Mixed_7b = TE(1280, use_max=False)
    self.Mixed_7c = TE(2048, use_max=True)
    self.fc = nn.Linear(2048, 1008)  # In the published file; the feature extractor must ignore it.

  def forward(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def reference_features(model, images_uint8, size):
  """pytorch-fid's preprocessing: uint8 -> [0, 1] -> bilinear resize (align_corners=False) -> [-1, 1]."""
  x = torch.from_numpy(np.array(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
  x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
  with torch.no_grad():
    return model(2 * x - 1).double().numpy()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A random TInception with non-trivial BN statistics, saved as .pth and converted to .safetensors."""
  torch.manual_seed(0)
  model = TInception()
  # Calibrate running stats on a batch (momentum 1 copies batch stats) so activations keep a sane scale through
  # ~100 layers, then perturb every BN parameter so folding errors (mean/var/gamma/beta, eps) would show.
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for bn in bns:
    bn.momentum = 1.0
  model.train()
  with torch.no_grad():
    model(torch.rand(6, 3, SIZE, SIZE) * 2 - 1)
    for bn in bns:
      c = bn.num_features
      bn.running_mean += 0.2 * bn.running_var.sqrt() * torch.randn(c)
      bn.running_var *= torch.empty(c).uniform_(0.5, 2.0)
      bn.weight.copy_(torch.empty(c).uniform_(0.5, 1.5))
      bn.bias.copy_(0.2 * torch.randn(c))
  model.eval()
  d = tmp_path_factory.mktemp("fid_weights")
  torch.save(model.state_dict(), d / "fake_inception.pth")
  digest = convert_fid_weights.convert(d / "fake_inception.pth", d / "fake_inception.safetensors",
                                       expected_sha256_prefix=None)
  return model, d / "fake_inception.safetensors", digest


def _assert_close(got, want, rel=5e-5):
  err = np.abs(got - want).max()
  scale = np.abs(want).max()
  assert err <= rel * scale, f"max abs error {err:.3g} vs feature scale {scale:.3g}"


def test_features_match_torch_reference(weights):
  model, path, digest = weights
  extractor = inception.InceptionFeatures(path, expected_sha256=digest, image_size=SIZE, batch_size=3)
  assert extractor.sha256 == digest
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(5, 48, 48, 3), dtype=np.uint8)  # Upsampled 48 -> 139 inside.
  got = extractor.extract_features(images)
  assert got.shape == (5, 2048) and got.dtype == np.float64
  want = reference_features(model, images, SIZE)
  assert np.abs(want).max() > 1e-3 and want.std() > 1e-4  # The random network is not degenerate.
  _assert_close(got, want)

  # Float grayscale in [-1, 1]: quantised to uint8 as a saved PNG, then repeated to 3 channels.
  gray = rng.uniform(-1, 1, size=(4, 48, 48, 1)).astype(np.float32)
  quantised = np.repeat(np.floor((gray + 1) * 127.5 + 0.5).clip(0, 255).astype(np.uint8), 3, axis=-1)
  _assert_close(extractor.extract_features(gray, batch_size=3), reference_features(model, quantised, SIZE))


def test_direct_forward_at_minimum_size(weights):
  model, path, _ = weights
  net = inception.load_fid_inception(path)
  x = np.random.default_rng(1).uniform(-1, 1, size=(2, 75, 75, 3)).astype(np.float32)
  got = np.asarray(net(jnp.asarray(x)))
  with torch.no_grad():
    want = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  assert got.shape == (2, inception.FEATURE_DIM)
  _assert_close(got, want)


@pytest.mark.parametrize("src,dst", [(48, 139), (160, 139), (299, 139), (37, 80)])
def test_resize_matches_torch_interpolate(src, dst):
  x = np.random.default_rng(2).uniform(size=(2, src, src, 3)).astype(np.float32)
  got = np.asarray(jax.image.resize(x, (2, dst, dst, 3), method="bilinear", antialias=False))
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(dst, dst), mode="bilinear",
                       align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_loader_errors_are_one_line(weights, tmp_path):
  _, path, digest = weights
  tensors = load_file(str(path))
  broken = dict(tensors)
  del broken["Mixed_6c.branch7x7dbl_3.bn.running_var"]
  save_file(broken, str(tmp_path / "missing.safetensors"))
  with pytest.raises(ValueError, match="1 of 470 .* missing .*Mixed_6c.branch7x7dbl_3.bn.running_var") as e:
    inception.load_fid_inception(tmp_path / "missing.safetensors")
  assert "\n" not in str(e.value)

  reshaped = dict(tensors)
  reshaped["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  save_file(reshaped, str(tmp_path / "shape.safetensors"))
  with pytest.raises(ValueError, match=r"Mixed_5b.branch1x1.conv.weight has shape \(64, 192, 3, 3\)"):
    inception.load_fid_inception(tmp_path / "shape.safetensors")

  with pytest.raises(ValueError, match="SHA-256"):
    inception.load_fid_inception(path, expected_sha256="0" * 64 if not digest.startswith("0") else "1" * 64)
  inception.load_fid_inception(path, expected_sha256=digest[:8])  # A torch-hub style prefix is accepted.

  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable .safetensors"):
    inception.load_fid_inception(tmp_path / "junk.safetensors")


def test_converter_checks_published_hash_prefix(weights, tmp_path, capsys):
  _, path, _ = weights
  pth = path.with_suffix(".pth")
  assert convert_fid_weights.main([str(pth), str(tmp_path / "out.safetensors")]) == 2  # Not 6726825d...
  assert "does not start with 6726825d" in capsys.readouterr().err
  assert not (tmp_path / "out.safetensors").exists()
