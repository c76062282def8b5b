"""Checks the image sources: the ADM center crop, image folders with bad files, and TFDS.

- center_crop_arr against a hand-computed case (2x2 BOX means of a linear ramp, then the
  center crop) and the reference's resize arithmetic (short side -> target, centered crop).
- imagefolder: labels from sorted class folders, pixels equal to PIL decode + crop + (x/255-0.5)/0.5
  (torchvision's ToTensor/Normalize formula), a corrupt file skipped and counted once per epoch,
  and errors that name a missing directory, an empty folder and an unknown TFDS dataset; a
  skipped file is logged with its path (a truncated image's decoder error names none).
- tfds: MNIST through `tfds.data_source` under `tfds.testing.mock_data` (no TensorFlow input).
"""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dit_jax import data
from dit_jax.data import imagefolder, transforms


def test_center_crop_hand_checked_box_halving():
  y, x = np.mgrid[0:4, 0:8]
  ramp = (10 * x + 40 * y).astype(np.uint8)  # W=8, H=4; target 2 -> one BOX halving to 4x2
  out = transforms.center_crop_arr(Image.fromarray(ramp), 2)
  # Halved pixel (Y, X) = mean of its 2x2 block = 20X + 80Y + 25; center crop keeps X = 1, 2.
  np.testing.assert_array_equal(out[..., 0], [[45, 65], [125, 145]])


def test_center_crop_resize_arithmetic():
  img = Image.fromarray(np.full((200, 300, 3), 77, np.uint8))  # H=200, W=300, target 64
  out = transforms.center_crop_arr(img, 64)  # halve to 150x100, bicubic to 96x64, crop
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  assert (out == 77).all()
  bars = np.zeros((64, 96), np.uint8)
  bars[:, 16:80] = 255  # exactly the central 64 columns of a 96x64 image
  cropped = transforms.center_crop_arr(Image.fromarray(bars), 64)
  assert (cropped == 255).all()


def _write_folder(root):
  rng = np.random.RandomState(0)
  sizes = [(40, 30), (20, 50), (33, 33)]
  for cls, ext in (("cat", "png"), ("dog", "jpg")):
    (root / cls).mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
      Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(root / cls / f"{i}.{ext}")
  (root / "dog" / "corrupt.jpg").write_bytes(b"not a jpeg at all")


def test_imagefolder_pixels_labels_and_skipped_count(tmp_path):
  _write_folder(tmp_path / "train")
  cfg = dict(source="imagefolder", data_dir=str(tmp_path), split="train", image_size=16, flip=False)
  assert data.input_shape(cfg) == (16, 16, 3)
  source = imagefolder.ImageFolderSource.from_config(cfg)
  assert source.classes == ["cat", "dog"] and len(source) == 7
  it = iter(data.create_dataset(cfg, global_batch_size=7, seed=0, process_index=0, process_count=1))
  for _ in range(2):  # two epochs: the corrupt file is skipped (and counted) once in each
    batch = next(it)
    assert batch["x"].shape == (7, 16, 16, 3) and batch["skipped"].sum() == 1
  expected = {}
  for i in range(len(source)):
    path = source.path(i)
    if not path.endswith("corrupt.jpg"):
      arr = np.array(transforms.center_crop_arr(Image.open(path).convert("RGB"), 16), np.float32)
      expected[path] = ((arr / 255.0 - 0.5) / 0.5, 0 if "/cat/" in path else 1)
  for x, y in zip(batch["x"], batch["y"]):
    assert any(np.array_equal(x, ex) and y == ey for ex, ey in expected.values())


def test_skipped_images_are_logged_with_their_path(tmp_path, caplog):
  (tmp_path / "cls").mkdir()
  image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (40, 40, 3), np.uint8))
  image.save(tmp_path / "cls" / "a_whole.png")
  whole = (tmp_path / "cls" / "a_whole.png").read_bytes()
  (tmp_path / "cls" / "b_truncated.png").write_bytes(whole[:len(whole) // 2])
  source = imagefolder.ImageFolderSource(str(tmp_path), 16)
  with caplog.at_level("WARNING"):
    example = source[1]  # the truncated file: replaced by the next one (wrapping to index 0)
  assert example["skipped"] == 1
  np.testing.assert_array_equal(example["x"], source.read(0)["x"])
  # PIL's own message ("image file is truncated") names no file; the log line must.
  assert f"cannot read {tmp_path / 'cls' / 'b_truncated.png'}: OSError: image file is truncated" \
      in caplog.text


def test_missing_and_empty_sources_are_named_errors(tmp_path):
  missing = dict(source="imagefolder", data_dir=str(tmp_path / "nope"), image_size=16)
  with pytest.raises(FileNotFoundError, match="nope"):
    data.create_dataset(missing, global_batch_size=2, seed=0, process_index=0, process_count=1)
  (tmp_path / "empty" / "some_class").mkdir(parents=True)
  empty = dict(source="imagefolder", data_dir=str(tmp_path / "empty"), image_size=16)
  with pytest.raises(ValueError, match="empty has no images"):
    data.create_dataset(empty, global_batch_size=2, seed=0, process_index=0, process_count=1)
  unknown = dict(source="tfds", name="no_such_dataset_xyz", image_size=16)
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    data.create_dataset(unknown, global_batch_size=2, seed=0, process_index=0, process_count=1)


def test_tfds_mnist_under_mock_data():
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    raw = tfds.data_source("mnist", split="train")
    cfg = dict(source="tfds", name="mnist", split="train", image_size=28, flip=False)
    assert data.input_shape(cfg) == (28, 28, 1)
    it = iter(data.create_dataset(cfg, global_batch_size=24, seed=0, process_index=0, process_count=2))
    batch = next(it)
    assert batch["x"].shape == (12, 28, 28, 1) and batch["y"].dtype == np.int32
    references = [((np.asarray(raw[i]["image"], np.float32) / 255.0 - 0.5) / 0.5, int(raw[i]["label"]))
                  for i in range(len(raw))]
    for x, y in zip(batch["x"], batch["y"]):
      assert any(np.array_equal(x, rx) and y == ry for rx, ry in references)
    small = next(iter(data.create_dataset(dict(cfg, image_size=14), global_batch_size=4, seed=0,
                                          process_index=0, process_count=1)))
    assert small["x"].shape == (4, 14, 14, 1)
