"""Moving digits: short videos of one scikit-learn digit moving over a blank canvas (issue 15).

The video default trains on a CPU with no download, as the digits default does for images. Each
example is F frames of a canvas x canvas single-channel image (background -1) with one 8x8 digit
(scaled to [-1, 1] as DigitsSource does) pasted at an integer top-left corner that moves with a
constant velocity in {-1, 0, +1} pixels per frame per axis and bounces off the borders. The label
is the digit's class.

- Motion is deterministic per (seed, index): `rng = np.random.default_rng([seed, index])`, then
  `start = rng.integers(0, canvas - 7, size=2)` (row, col) and `v = rng.integers(-1, 2, size=2)`;
  frame 0 is at `start`, and each later frame does `pos += v`, reversing `v` and reflecting `pos`
  into [0, canvas - 8] on an axis that left it. A canvas of 8 leaves no room: the digit stays.
- Train/test split by source digit, with the permutation dit_jax.quality uses for its classifier
  (so test videos show digits the quality classifier never trained on). It is restated here
  rather than imported, to keep JAX out of the data workers; the tests pin the two together.
- Example i uses split digit i % num_split_digits, so every digit appears `videos_per_digit` times
  in an epoch, each time with other motion.
"""
from typing import Any

import numpy as np

from dit_jax.data import sources

SOURCE = sources.SOURCE_MOVING_DIGITS
DEFAULT_CANVAS = 16
DEFAULT_VIDEOS_PER_DIGIT = 16
SPLITS = ("train", "test")
_SPLIT_SEED = 0  # dit_jax.quality.CLASSIFIER_RECIPE's seed and test_fraction
_TEST_FRACTION = 0.2
_DIGIT = sources.DIGITS_SIZE


def split_indices(num: int, split: str) -> np.ndarray:
  """Indices of scikit-learn's digits in `split`: the train / test parts of dit_jax.quality._split."""
  perm = np.random.default_rng(_SPLIT_SEED).permutation(num)
  num_test = int(round(num * _TEST_FRACTION))
  return perm[num_test:] if split == "train" else perm[:num_test]


def check_args(split: str, num_frames: int, canvas: int, videos_per_digit: int, seed: int) -> None:
  """ValueError naming the argument (and its config.data field) for an unusable value."""
  problems = [
      (split not in SPLITS, f"split={split!r} (config.data.split) is not one of {SPLITS}"),
      (num_frames < 2, f"num_frames={num_frames} (config.data.num_frames) must be at least 2: "
                       "a digit needs frames to move over, and dit_jax.video_quality scores the "
                       "motion of every training grid"),
      (canvas < _DIGIT, f"canvas={canvas} (config.data.image_size) must be at least {_DIGIT}, "
                        "the digit's side"),
      (videos_per_digit < 1, f"videos_per_digit={videos_per_digit} (config.data.videos_per_digit) "
                             "must be at least 1"),
      (seed < 0, f"seed={seed} (config.data.motion_seed) must be non-negative"),
  ]
  for bad, message in problems:
    if bad:
      raise ValueError(f"moving_digits: {message}.")


def _config_args(data_cfg: Any) -> dict:
  """MovingDigitsSource's arguments from `config.data` (defaults as the constructor's)."""
  return dict(split=sources.field(data_cfg, "split", "train"),
              num_frames=sources.num_frames(data_cfg),
              canvas=sources.field(data_cfg, "image_size", DEFAULT_CANVAS),
              videos_per_digit=sources.field(data_cfg, "videos_per_digit", DEFAULT_VIDEOS_PER_DIGIT),
              seed=sources.field(data_cfg, "motion_seed", 0))


def shape_from_config(data_cfg: Any) -> tuple[int, int, int, int]:
  """(F, canvas, canvas, 1) of the videos `config.data` describes, checked without loading them."""
  args = _config_args(data_cfg)
  check_args(**args)
  return (args["num_frames"], args["canvas"], args["canvas"], 1)


class MovingDigitsSource:
  """Random-access moving-digit videos: dict(x=float32 (F, canvas, canvas, 1), y=int32, skipped=0)."""

  def __init__(self, split: str = "train", num_frames: int = sources.DEFAULT_NUM_FRAMES,
               canvas: int = DEFAULT_CANVAS, videos_per_digit: int = DEFAULT_VIDEOS_PER_DIGIT,
               seed: int = 0):
    check_args(split, num_frames, canvas, videos_per_digit, seed)
    digits = sources.DigitsSource()
    rows = [digits[int(i)] for i in split_indices(len(digits), split)]
    self._digits = np.stack([row["x"][..., 0] for row in rows])
    self._labels = np.array([row["y"] for row in rows], np.int32)
    self.split, self.num_frames, self.canvas = split, num_frames, canvas
    self.videos_per_digit, self.seed = videos_per_digit, seed

  @classmethod
  def from_config(cls, data_cfg: Any) -> "MovingDigitsSource":
    return cls(**_config_args(data_cfg))

  def __len__(self) -> int:
    return len(self._labels) * self.videos_per_digit

  def _check_index(self, index: int) -> int:
    if not 0 <= index < len(self):
      raise IndexError(f"{self!r}: index {index} is outside [0, {len(self)}).")
    return int(index)

  def positions(self, index: int) -> np.ndarray:
    """int64 (F, 2): the digit's top-left (row, col) in each frame of video `index`."""
    index = self._check_index(index)
    high = self.canvas - _DIGIT
    rng = np.random.default_rng([self.seed, index])
    pos = rng.integers(0, high + 1, size=2)
    velocity = rng.integers(-1, 2, size=2) if high else np.zeros(2, np.int64)
    out = np.empty((self.num_frames, 2), np.int64)
    out[0] = pos
    for f in range(1, self.num_frames):
      pos = pos + velocity
      out_of_range = (pos < 0) | (pos > high)
      velocity = np.where(out_of_range, -velocity, velocity)
      pos = np.where(pos < 0, -pos, np.where(pos > high, 2 * high - pos, pos))
      out[f] = pos
    return out

  def __getitem__(self, index: int) -> dict:
    index = self._check_index(index)
    digit_index = index % len(self._labels)
    frames = np.full((self.num_frames, self.canvas, self.canvas, 1), -1.0, np.float32)
    for frame, (row, col) in zip(frames, self.positions(index)):
      frame[row:row + _DIGIT, col:col + _DIGIT, 0] = self._digits[digit_index]
    return dict(x=frames, y=self._labels[digit_index], skipped=np.int32(0))

  def __repr__(self) -> str:
    return (f"MovingDigitsSource(split={self.split!r}, num_frames={self.num_frames}, "
            f"canvas={self.canvas}, videos_per_digit={self.videos_per_digit}, seed={self.seed})")
