"""Random-access data sources and the config -> source dispatch.

Every source returns, for an index, `dict(x=float32 HWC, y=int32, skipped=int32)` before
augmentation (pixel sources: x in [-1, 1], unflipped), or the raw posterior record for the
latents source; video sources (`is_video`) return x of shape FHWC (frames first). Sources are
plain picklable objects with a stable `repr` (grain prints it in its stats and ships the object
to worker processes).

Data directories may be local or in a bucket (gs://, s3://, ...): sources reach them through
etils.epath, the file layer TFDS and Orbax use (tf.io.gfile when TensorFlow is installed, else
fsspec).
"""
import json
import logging
from typing import Any

import numpy as np
from etils import epath

SOURCE_DIGITS = "digits"
SOURCE_TFDS = "tfds"
SOURCE_IMAGEFOLDER = "imagefolder"
SOURCE_LATENTS = "latents"
SOURCE_MOVING_DIGITS = "moving_digits"
SOURCE_VIDEOFOLDER = "videofolder"
SOURCE_DIGIT_PAIRS = "digit_pairs"
SOURCES = (SOURCE_DIGITS, SOURCE_TFDS, SOURCE_IMAGEFOLDER, SOURCE_LATENTS, SOURCE_MOVING_DIGITS,
           SOURCE_VIDEOFOLDER, SOURCE_DIGIT_PAIRS)
VIDEO_SOURCES = (SOURCE_MOVING_DIGITS, SOURCE_VIDEOFOLDER)
DEFAULT_NUM_FRAMES = 8

DIGITS_SIZE = 8
DIGITS_CLASSES = 10
_DIGITS_MAX = 16.0  # scikit-learn's digits are integers 0..16


def field(cfg: Any, name: str, default: Any = None) -> Any:
  """Reads `name` from a ConfigDict or mapping, with a default for absent or None values."""
  value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
  return default if value is None else value


def is_video(data_cfg: Any) -> bool:
  """Whether `data_cfg.source` gives videos (x of shape F, H, W, C) rather than images."""
  return field(data_cfg, "source", SOURCE_DIGITS) in VIDEO_SOURCES


def num_frames(data_cfg: Any) -> int:
  """`data.num_frames` of a video source (default 8); ValueError unless it is at least 1."""
  frames = field(data_cfg, "num_frames", DEFAULT_NUM_FRAMES)
  if frames < 1:
    raise ValueError(f"config.data.num_frames={frames} must be at least 1 (frames per video).")
  return frames


class DataDirError(FileNotFoundError):
  """A data directory its source cannot read: `data_dir` and what was looked for there."""

  def __init__(self, data_dir: str, problem: str):
    super().__init__(f"{data_dir}: {problem}")
    self.data_dir = data_dir
    self.problem = problem


def as_path(path: str) -> epath.Path:
  """`path` (local, gs://, s3://, ...) as an epath.Path; DataDirError for a scheme epath lacks."""
  try:
    return epath.Path(path)
  except KeyError as e:  # epath looks the scheme up in its registry
    raise DataDirError(path, "no file layer for this scheme (etils.epath reads local paths, "
                             "gs://, s3://, az:// and hf://).") from e


def read_json(data_dir: str, name: str, missing: str) -> dict:
  """`data_dir/name` parsed as JSON (the meta.json of a cache); DataDirError(data_dir, missing)
  when the file is absent."""
  path = as_path(data_dir) / name
  if not path.exists():
    raise DataDirError(data_dir, missing)
  return json.loads(path.read_text())


def write_json(data_dir: str, name: str, value: dict) -> None:
  """Writes `value` as indented JSON to `data_dir/name`, creating the directory."""
  path = as_path(data_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / name).write_text(json.dumps(value, indent=2))


class DigitsSource:
  """scikit-learn's 1,797 8x8 handwritten digits, 1 channel, scaled to [-1, 1].

  `upscale` > 1 repeats each pixel (nearest neighbour) so larger models can be smoke-tested
  on the same data, e.g. upscale=2 for 16x16.
  """

  def __init__(self, upscale: int = 1):
    from sklearn.datasets import load_digits  # local: only this source needs scikit-learn
    digits = load_digits()
    images = digits.images.astype(np.float32) / np.float32(_DIGITS_MAX / 2) - np.float32(1.0)
    if upscale > 1:
      images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    self._images = images[..., None]
    self._labels = digits.target.astype(np.int32)
    self._upscale = upscale

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict:
    return dict(x=self._images[index], y=self._labels[index], skipped=np.int32(0))

  def __repr__(self) -> str:
    return f"DigitsSource(upscale={self._upscale})"


class SkippingSource:
  """Base for sources whose examples can be unreadable: a failed read is logged and replaced by
  the next readable example, and `skipped` in the returned dict counts the failures.

  Subclasses implement `read(index) -> dict(x, y)` (raising on bad input) and `__len__`.
  """
  max_consecutive_failures = 1000

  def read(self, index: int) -> dict:
    raise NotImplementedError

  def __getitem__(self, index: int) -> dict:
    n = len(self)
    for skipped in range(min(n, self.max_consecutive_failures)):
      try:
        return dict(self.read((index + skipped) % n), skipped=np.int32(skipped))
      except Exception as e:  # pylint: disable=broad-except  # any decode error: skip, count
        logging.warning("%r: skipping unreadable example %d: %s", self, (index + skipped) % n, e)
    raise RuntimeError(f"{self!r}: {min(n, self.max_consecutive_failures)} consecutive examples "
                       f"from index {index} are unreadable; check the data.")


def digits_upscale(data_cfg: Any) -> int:
  """The integer factor from 8x8 to `data.image_size` (0/None/8 mean 1); errors otherwise."""
  size = field(data_cfg, "image_size", DIGITS_SIZE)
  if size % DIGITS_SIZE:
    raise ValueError(
        f"config.data.image_size={size} is not a multiple of 8; the digits source is 8x8 "
        "(set image_size to 8, or a multiple of 8 to upscale by pixel repetition).")
  return size // DIGITS_SIZE


def check_data_dir(data_cfg: Any) -> None:
  """Opens what the source needs from `data.data_dir` without reading the data (meta.json and
  markers of a latent cache, the image or video folder, the TFDS dataset info; the fields of
  moving_digits and digit_pairs, which have no directory), so that a path that cannot be read
  fails before compiling. Raises DataDirError (or ValueError for other fields)."""
  source = field(data_cfg, "source", SOURCE_DIGITS)
  if source == SOURCE_LATENTS:
    from dit_jax.data import latents
    latents.open_cache(latents.cache_dir_from_config(data_cfg))
  elif source == SOURCE_IMAGEFOLDER:
    from dit_jax.data import imagefolder
    imagefolder.check_root(imagefolder.root_from_config(data_cfg), field(data_cfg, "data_dir", ""))
  elif source == SOURCE_TFDS:
    from dit_jax.data import tfds_source
    tfds_source.open_source(data_cfg)
  elif source == SOURCE_VIDEOFOLDER:
    from dit_jax.data import videofolder
    videofolder.check_root(data_cfg)
  elif source == SOURCE_MOVING_DIGITS:  # no directory: check the fields before compiling
    from dit_jax.data import moving_digits
    moving_digits.shape_from_config(data_cfg)
  elif source == SOURCE_DIGIT_PAIRS:
    from dit_jax.data import digit_pairs
    digit_pairs.shape_from_config(data_cfg)


def make_source(data_cfg: Any):
  """Builds the random-access source named by `data_cfg.source` (see SOURCES), its examples
  captioned from the prompt-embedding cache `data_cfg.text_cache` when one is named."""
  source = _make_uncaptioned_source(data_cfg)
  cache_dir = field(data_cfg, "text_cache", "")
  if not cache_dir:
    return source
  from dit_jax.data import text_cache  # local: as the other optional parts
  return text_cache.CaptionedSource(source, cache_dir)


def _make_uncaptioned_source(data_cfg: Any):
  source = field(data_cfg, "source", SOURCE_DIGITS)
  if source == SOURCE_DIGITS:
    return DigitsSource(digits_upscale(data_cfg))
  if source == SOURCE_TFDS:
    from dit_jax.data import tfds_source  # local: keeps tensorflow_datasets off the digits path
    return tfds_source.TfdsSource.from_config(data_cfg)
  if source == SOURCE_IMAGEFOLDER:
    from dit_jax.data import imagefolder
    return imagefolder.ImageFolderSource.from_config(data_cfg)
  if source == SOURCE_LATENTS:
    from dit_jax.data import latents
    return latents.LatentsSource.from_config(data_cfg)
  if source == SOURCE_MOVING_DIGITS:
    from dit_jax.data import moving_digits
    return moving_digits.MovingDigitsSource.from_config(data_cfg)
  if source == SOURCE_VIDEOFOLDER:
    from dit_jax.data import videofolder
    return videofolder.VideoFolderSource.from_config(data_cfg)
  if source == SOURCE_DIGIT_PAIRS:
    from dit_jax.data import digit_pairs
    return digit_pairs.DigitPairsSource.from_config(data_cfg)
  raise ValueError(f"unknown config.data.source={source!r}; choose one of {SOURCES}.")
