"""A directory of class subfolders of images (torchvision ImageFolder layout), ADM-cropped.

`root/<class name>/**/<file>.{jpg,jpeg,png,...}`; labels are the sorted class folder names'
indices, files are sorted, as torchvision's ImageFolder (which DiT's training script uses) does.
`root` may be local or in a bucket (gs://): listing and reading go through etils.epath.
Captions for text-conditioned training are `<image>.txt` files beside the images
(`sidecar_captions`; python -m dit_jax.data.precompute_text --image_folder ROOT encodes them).
"""
from typing import Any

import numpy as np
from PIL import Image

from dit_jax.data import sources, transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def root_from_config(data_cfg: Any) -> str:
  """`data.data_dir`, joined with `data.split` when set."""
  data_dir = sources.field(data_cfg, "data_dir", "")
  if not data_dir:
    raise ValueError("config.data.data_dir must name the image folder for source='imagefolder'.")
  split = sources.field(data_cfg, "split", "")
  return str(sources.as_path(data_dir) / split) if split else data_dir


def check_root(root: str, data_dir: str = "") -> None:
  """DataDirError unless `root` (`data_dir`, or `data_dir`/split) is a directory."""
  if not sources.as_path(root).is_dir():
    where = "there" if root == (data_dir or root) else f"at {root} (data_dir / config.data.split)"
    raise sources.DataDirError(data_dir or root, f"no image folder {where}: not a directory.")


def _image_files(folder) -> list[str]:
  """Image files under `folder` (any depth), relative to it. Entries with an image extension
  are taken for files without asking the file layer (a request each on a bucket)."""
  files = []
  for entry in folder.iterdir():
    if entry.name.lower().endswith(IMAGE_EXTENSIONS):
      files.append(entry.name)
    elif entry.is_dir():
      files += [f"{entry.name}/{f}" for f in _image_files(entry)]
  return files


def list_images(root: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Returns (class names, relative paths as a bytes array, int32 labels) under `root`, in
  torchvision's order: classes sorted, then files by (directory path, file name)."""
  check_root(root)
  class_dirs = sorted((e for e in sources.as_path(root).iterdir() if e.is_dir()), key=lambda p: p.name)
  paths, labels = [], []
  for label, class_dir in enumerate(class_dirs):
    files = sorted(_image_files(class_dir), key=lambda f: f.rpartition("/")[::2])
    paths += [f"{class_dir.name}/{f}" for f in files]
    labels += [label] * len(files)
  if not paths:
    raise ValueError(f"image folder {root} has no images in class subfolders "
                     f"({len(class_dirs)} subfolders, extensions {IMAGE_EXTENSIONS}).")
  return [d.name for d in class_dirs], np.array(paths, dtype=np.bytes_), np.array(labels, np.int32)


def sidecar_captions(root: str) -> list[str]:
  """The caption of every image under `root`, in `list_images` order (the source's example
  order): the text of `<image path without extension>.txt` beside it, line breaks joined by
  spaces. ValueError naming the missing files (at most 5, and their count)."""
  _, paths, _ = list_images(root)
  captions, missing = [], []
  for relative in paths:
    path = sources.as_path(root) / relative.decode()
    sidecar = path.with_suffix(".txt")
    if sidecar.exists():
      captions.append(" ".join(sidecar.read_text(encoding="utf-8").split()))
    else:
      missing.append(str(sidecar))
  if missing:
    raise ValueError(f"{len(missing)} of {len(paths)} images under {root} have no caption file "
                     f"beside them, e.g. {missing[:5]}; write one <image>.txt per image.")
  return captions


def load_image(path: str, image_size: int) -> np.ndarray:
  """Decodes to RGB and applies the ADM center crop -> uint8 (image_size, image_size, 3)."""
  with sources.as_path(path).open("rb") as f, Image.open(f) as img:
    return transforms.center_crop_arr(img.convert("RGB"), image_size)


class ImageFolderSource(sources.SkippingSource):
  """Decoded, center-cropped images in [-1, 1] with their class index; bad files are skipped."""

  def __init__(self, root: str, image_size: int):
    self.root = root
    self.image_size = image_size
    self.classes, self._paths, self._labels = list_images(root)

  @classmethod
  def from_config(cls, data_cfg: Any) -> "ImageFolderSource":
    image_size = sources.field(data_cfg, "image_size", 0)
    if image_size <= 0:
      raise ValueError("config.data.image_size must be set for source='imagefolder' (e.g. 256).")
    return cls(root_from_config(data_cfg), image_size)

  def __len__(self) -> int:
    return len(self._labels)

  def path(self, index: int) -> str:
    return str(sources.as_path(self.root) / self._paths[index].decode())

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
