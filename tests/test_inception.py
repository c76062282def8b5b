"""The FID Inception (dit_jax.evaluation.inception) against pytorch-fid 0.3.0, and its weights.

- Parity: pytorch-fid's own network and preprocessing (tests/fid_oracle.py: random weights,
  calibrated batch norms) and ours on the converted state dict give the same pool3 features,
  bias-free logits and Mixed_6d sFID features (max error <= 1e-4 of each output's range) at
  299 px and at non-square sizes that are upsampled and downsampled.
- Our resize equals torch's bilinear ``align_corners=False`` interpolation (no antialiasing).
- A batch sharded over the 8 fake devices gives each image the features it gets alone.
- The converter names every missing, unknown and mis-shaped key in one error.
- load_params downloads from a server on 127.0.0.1 (never the internet) into a cache once,
  refuses a file whose sha256 does not match its name without caching it, and names a
  truncated or foreign local file.
"""
import hashlib

import jax
import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from flax import traverse_util

import fid_oracle  # tests/ is on sys.path (pytest rootdir-relative conftest)
from local_server import LocalServer
from dit_jax import downloads
from dit_jax.evaluation import inception

TOLERANCE = 1e-4  # max |ours - pytorch-fid| / max |pytorch-fid|, per output
OUTPUT_SHAPES = {"pool": (2048,), "logits": (1008,), "spatial": (17 * 17 * 7,)}
SMALL = (48, 64)  # upsampled to 299; also the shape of the sharding test's batch


def _images(seed: int, n: int, height: int, width: int) -> np.ndarray:
  """uint8 images with structure at several scales (smooth colour fields plus pixel noise)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    grid = int(rng.integers(3, 12))
    field = scipy.ndimage.zoom(rng.uniform(0, 255, (grid, grid, 3)),
                               (height / grid, width / grid, 1), order=3)
    out.append(np.clip(field + rng.normal(0, 20, field.shape), 0, 255).astype(np.uint8))
  return np.stack(out)


def _relative_error(got, want) -> float:
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def torch_model():
  return fid_oracle.build_model()


@pytest.fixture(scope="module")
def state_dict(torch_model):
  return {k: v.numpy() for k, v in torch_model.state_dict().items()}


@pytest.fixture(scope="module")
def params(state_dict):
  return inception.params_from_pytorch_fid(state_dict)


@pytest.mark.parametrize("height,width", [(299, 299), SMALL, (320, 352)])
def test_features_match_pytorch_fid(torch_model, params, height, width):
  images = _images(height, 2, height, width)
  want = fid_oracle.reference_features(torch_model, images)
  got = jax.device_get(inception.extract_features(params, images))
  assert set(got) == set(OUTPUT_SHAPES)
  for name, shape in OUTPUT_SHAPES.items():
    assert got[name].shape == (2, *shape) and got[name].dtype == np.float32, name
    error = _relative_error(got[name], want[name])
    assert error <= TOLERANCE, f"{name} at {height}x{width}: relative error {error:.2e}"


@pytest.mark.parametrize("height,width", [(299, 299), (5, 7), (48, 64), (300, 299), (640, 17)])
def test_preprocess_is_torch_bilinear_without_antialiasing(height, width):
  images = _images(0, 2, height, width)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  want = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
  got = np.asarray(inception.preprocess(images))
  assert got.shape == (2, 299, 299, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=0, atol=2e-6)


def test_preprocess_rejects_non_rgb_uint8():
  with pytest.raises(ValueError, match=r"uint8 RGB images .*; got float32 \(1, 8, 8, 3\)"):
    inception.preprocess(np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"got uint8 \(1, 8, 8, 1\)"):
    inception.preprocess(np.zeros((1, 8, 8, 1), np.uint8))


def test_sharded_batch_gives_each_image_its_own_features(params, devices):
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  images = _images(SMALL[0], 8, *SMALL)  # its first two are the parity test's SMALL images
  extract = jax.jit(inception.extract_features)
  got = extract(jax.device_put(params, replicated), jax.device_put(images, batch))
  assert got["pool"].sharding.is_equivalent_to(batch, 2)
  alone = inception.extract_features(params, images[:2])
  for name in OUTPUT_SHAPES:
    error = _relative_error(got[name][:2], np.asarray(alone[name]))
    # Not bitwise: XLA picks conv kernels by batch size; batch statistics would differ by O(1).
    assert error <= 1e-5, f"{name}: sharded batch of 8 vs batch of 2 differ by {error:.2e}"


def test_init_params_has_the_converted_structure(params):
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(inception.init_params(jax.random.key(0))) == shapes(params)


def test_converter_names_every_bad_key(state_dict):
  bad = dict(state_dict)
  del bad["Mixed_6d.branch1x1.conv.weight"]
  bad["Mixed_8a.conv.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  bad["fc.weight"] = np.zeros((1000, 2048), np.float32)
  assert any(k.endswith("num_batches_tracked") for k in bad)  # present, and ignored
  with pytest.raises(ValueError) as raised:
    inception.params_from_pytorch_fid(bad)
  message = str(raised.value)
  assert "missing Mixed_6d.branch1x1.conv.weight" in message
  assert "unknown Mixed_8a.conv.weight" in message
  assert "mis-shaped fc.weight: (1000, 2048), expected (1008, 2048)" in message
  assert message.count("missing") == message.count("unknown") == message.count("mis-shaped") == 1


def test_converter_layout(state_dict, params):
  flat = traverse_util.flatten_dict(jax.device_get(params))
  torch_kernel = state_dict["Mixed_7c.branch3x3_2a.conv.weight"]  # (out, in, H, W)
  np.testing.assert_array_equal(flat["params", "Mixed_7c", "branch3x3_2a", "conv", "kernel"],
                                torch_kernel.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["batch_stats", "Conv2d_1a_3x3", "bn", "var"],
                                state_dict["Conv2d_1a_3x3.bn.running_var"])
  np.testing.assert_array_equal(flat["params", "fc", "kernel"], state_dict["fc.weight"].T)
  assert not any("bias" in path and "fc" in path for path in flat)  # fc.bias is dropped


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, torch_model):
  """The random model saved under torch.hub names: one with its sha256 prefix, one with a
  wrong prefix; served over HTTP."""
  directory = tmp_path_factory.mktemp("served")
  torch.save(torch_model.state_dict(), directory / "weights.pth")
  data = (directory / "weights.pth").read_bytes()
  sha = hashlib.sha256(data).hexdigest()
  wrong = format(int(sha[:8], 16) ^ 0xFFFFFFFF, "08x")
  good = directory / f"pt_inception-test-{sha[:8]}.pth"
  (directory / "weights.pth").rename(good)
  (directory / f"pt_inception-test-{wrong}.pth").write_bytes(data)
  server = LocalServer(directory)
  yield {"server": server, "good": good, "sha": sha, "wrong": wrong, "data": data}
  server.close()


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_params_downloads_once_into_the_cache(weight_files, params, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  monkeypatch.setenv(downloads.CACHE_ENV, str(cache))
  server, name = weight_files["server"], weight_files["good"].name
  before = server.requests
  _assert_same_tree(inception.load_params(f"{server.url}/{name}"), params)
  assert [p.name for p in cache.iterdir()] == [name]
  assert (cache / name).read_bytes() == weight_files["data"]
  _assert_same_tree(inception.load_params(f"{server.url}/{name}"), params)
  assert server.requests - before == 1
  _assert_same_tree(inception.load_params(weight_files["good"]), params)  # a local path


def test_load_params_refuses_a_wrong_hash_and_caches_nothing(weight_files, tmp_path):
  server, wrong, sha = weight_files["server"], weight_files["wrong"], weight_files["sha"]
  cache = tmp_path / "cache"
  with pytest.raises(ValueError) as raised:
    inception.load_params(f"{server.url}/pt_inception-test-{wrong}.pth", cache_dir=cache)
  assert f"sha256 {sha}" in str(raised.value) and f"starts with {wrong}" in str(raised.value)
  assert list(cache.iterdir()) == []


@pytest.mark.parametrize("content", ["truncated", "html"])
def test_load_params_names_an_unreadable_file(weight_files, tmp_path, content):
  path = tmp_path / weight_files["good"].name
  data = weight_files["data"][:100_000] if content == "truncated" else b"<html>Not Found</html>"
  path.write_bytes(data)
  with pytest.raises(ValueError, match="could not be read as a PyTorch weight file") as raised:
    inception.load_params(path)
  assert str(path) in str(raised.value) and "Delete it and download it again" in str(raised.value)


def test_load_params_names_a_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nothing.pth not found"):
    inception.load_params(tmp_path / "nothing.pth")
