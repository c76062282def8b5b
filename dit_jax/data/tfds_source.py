"""Any TFDS image-classification dataset through `tfds.data_source` (ArrayRecord; no TensorFlow).

The dataset must be prepared in `data_dir` (local or gs://) with an array_record file format,
e.g. `tfds build imagenet2012 --data_dir DIR --file_format=array_record` after placing the
ImageNet tars in DIR/downloads/manual. Nothing is downloaded at run time.
"""
from typing import Any

import numpy as np
from PIL import Image

from dit_jax.data import sources, transforms

IMAGE_KEY = "image"
LABEL_KEY = "label"


def open_source(data_cfg: Any):
  """`tfds.data_source` of `data.name` / `data.split` in `data.data_dir` (local or a bucket:
  TFDS reads it through etils.epath, and its ArrayRecord shards as latents.py describes)."""
  import tensorflow_datasets as tfds  # local: only this source needs it
  name = sources.field(data_cfg, "name", "")
  split = sources.field(data_cfg, "split", "train")
  data_dir = sources.field(data_cfg, "data_dir", None) or None
  if not name:
    raise ValueError("config.data.name must name the TFDS dataset for source='tfds' (e.g. 'imagenet2012').")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown TFDS dataset config.data.name={name!r}.") from e
  except (NotImplementedError, FileNotFoundError, AssertionError, ValueError) as e:
    raise sources.DataDirError(
        data_dir or "(the default TFDS data_dir)",
        f"TFDS dataset {name!r} split {split!r} is not prepared there as array_record; run "
        f"`tfds build {name} --data_dir DIR --file_format=array_record`. ({e})") from e


def num_channels(data_cfg: Any) -> int:
  """Channels of the dataset's image feature (1 for MNIST, 3 for ImageNet)."""
  return open_source(data_cfg).dataset_info.features[IMAGE_KEY].shape[-1]


class TfdsSource(sources.SkippingSource):
  """TFDS examples, ADM center-cropped to `image_size`, scaled to [-1, 1]."""

  def __init__(self, data_source, image_size: int):
    self._source = data_source
    self.image_size = image_size

  @classmethod
  def from_config(cls, data_cfg: Any) -> "TfdsSource":
    image_size = sources.field(data_cfg, "image_size", 0)
    if image_size <= 0:
      raise ValueError("config.data.image_size must be set for source='tfds' (e.g. 256).")
    return cls(open_source(data_cfg), image_size)

  def __len__(self) -> int:
    return len(self._source)

  def read(self, index: int) -> dict:
    example = self._source[index]
    image = np.asarray(example[IMAGE_KEY])
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    arr = transforms.center_crop_arr(pil, self.image_size)
    return dict(x=transforms.uint8_to_unit(arr), y=np.int32(example[LABEL_KEY]))

  def __repr__(self) -> str:
    return f"TfdsSource({self._source!r}, image_size={self.image_size})"
