"""A directory of class subfolders of images (torchvision ImageFolder layout), ADM-cropped.

`root/<class name>/**/<file>.{jpg,jpeg,png,...}`; labels are the sorted class folder names'
indices, files are sorted, as torchvision's ImageFolder (which DiT's training script uses) does.
"""
import os
from typing import Any

import numpy as np
from PIL import Image

from dit_jax.data import sources, transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(root: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Returns (class names, relative paths as a bytes array, int32 labels) under `root`."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist (config.data.data_dir / split).")
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  paths, labels = [], []
  for label, name in enumerate(classes):
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
      dirnames.sort()
      for filename in sorted(filenames):
        if filename.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.relpath(os.path.join(dirpath, filename), root))
          labels.append(label)
  if not paths:
    raise ValueError(f"image folder {root} has no images in class subfolders "
                     f"({len(classes)} subfolders, extensions {IMAGE_EXTENSIONS}).")
  return classes, np.array(paths, dtype=np.bytes_), np.array(labels, np.int32)


def load_image(path: str, image_size: int) -> np.ndarray:
  """Decodes to RGB and applies the ADM center crop -> uint8 (image_size, image_size, 3)."""
  with Image.open(path) as img:
    return transforms.center_crop_arr(img.convert("RGB"), image_size)


class ImageFolderSource(sources.SkippingSource):
  """Decoded, center-cropped images in [-1, 1] with their class index; bad files are skipped."""

  def __init__(self, root: str, image_size: int):
    self.root = root
    self.image_size = image_size
    self.classes, self._paths, self._labels = list_images(root)

  @classmethod
  def from_config(cls, data_cfg: Any) -> "ImageFolderSource":
    data_dir = sources.field(data_cfg, "data_dir", "")
    if not data_dir:
      raise ValueError("config.data.data_dir must name the image folder for source='imagefolder'.")
    split = sources.field(data_cfg, "split", "")
    image_size = sources.field(data_cfg, "image_size", 0)
    if image_size <= 0:
      raise ValueError("config.data.image_size must be set for source='imagefolder' (e.g. 256).")
    return cls(os.path.join(data_dir, split) if split else data_dir, image_size)

  def __len__(self) -> int:
    return len(self._labels)

  def path(self, index: int) -> str:
    return os.path.join(self.root, self._paths[index].decode())

  def read(self, index: int) -> dict:
    path = self.path(index)
    try:
      arr = load_image(path, self.image_size)
    except Exception as e:  # pylint: disable=broad-except  # decoders raise many kinds
      # Decoder messages ("image file is truncated") do not say which file: the skip log must.
      raise OSError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    return dict(x=transforms.uint8_to_unit(arr), y=self._labels[index])

  def __repr__(self) -> str:
    return f"ImageFolderSource(root={self.root!r}, image_size={self.image_size})"
