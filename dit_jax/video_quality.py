"""Sample quality of the moving-digits default: per-frame class, identity over the clip, motion.

The video default (issue 15) shows one 8x8 scikit-learn digit moving over a blank canvas. Its
samples are scored frame by frame with the 8x8 digit classifier of ``dit_jax.quality``:

- the digit is located in each frame as the 8x8 window with the largest total intensity, cropped
  and classified; ``frame_accuracy`` is the fraction of frames classified as the asked label;
- ``identity``: the fraction of videos whose frames are all classified as one digit (any digit);
  ``identity_correct``: the fraction whose frames are all the asked label;
- the digit's centre in a frame is the frame's intensity-weighted centroid (row, col);
  ``mean_speed`` is the mean over videos of the mean centre displacement (Euclidean, pixels)
  between consecutive frames, and ``moving_fraction`` the fraction of videos whose centre travels
  more than ``MOVING_THRESHOLD`` pixels in total over the clip (the length of its path).

``moving_digits_quality(samples, labels)`` returns them as plain floats, ready to be logged.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dit_jax import quality

DIGIT = quality.IMAGE_SIZE
# Path length (pixels) over the clip above which a video counts as moving.
MOVING_THRESHOLD = 0.5
# Windows whose total intensity is within this much ([0, 1] units, i.e. half a full pixel) of the
# largest count as holding the digit. scikit-learn's digits mostly have an empty first or last
# column, so several windows hold the whole digit; plain argmax takes the top-left one, shifts the
# digit and drops the classifier from 98.6% to 60% on real test digits pasted on a 16x16 canvas.
# Among the near-largest windows the one whose content centroid is nearest its centre wins, which
# crops the digit as the classifier saw it (98.6%; still 98% with Gaussian noise of std 0.05 added).
TIE_TOLERANCE = 0.5


def to_unit_videos(samples) -> np.ndarray:
  """Brings videos to float64 [0, 1] frames of shape (N, F, H, W), checking their shape.

  The pixel convention is ``quality.to_unit_images``': uint8 is divided by 255, floats are taken
  to be in the model's [-1, 1] range and clipped. Accepts (N, F, H, W) or (N, F, H, W, 1).
  """
  samples = np.asarray(samples)
  shape = samples.shape
  if samples.ndim == 5 and shape[-1] == 1:
    samples = samples[..., 0]
  if samples.ndim != 4 or samples.shape[2] != samples.shape[3]:
    raise ValueError(
        f"moving-digits quality needs 1-channel square videos (N, F, H, W[, 1]), got shape {shape}; "
        "for (N, 8, 8[, 1]) images use dit_jax.quality.digits_quality.")
  if samples.shape[2] < DIGIT:
    raise ValueError(f"moving-digits quality needs a canvas of at least {DIGIT}x{DIGIT} (the "
                     f"digit's size), got {samples.shape[2]}x{samples.shape[3]} (shape {shape}).")
  if samples.shape[1] < 2:
    raise ValueError(f"moving-digits quality needs at least 2 frames per video to measure motion, "
                     f"got {samples.shape[1]} (shape {shape}).")
  if samples.dtype == np.uint8:
    return samples.astype(np.float64) / 255.0
  return np.clip((samples.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)


def _window_sums(frames: np.ndarray) -> np.ndarray:
  """Sums over every DIGIT x DIGIT window of (M, H, W) frames, from an integral image: (M, P, P)."""
  c = np.pad(frames, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
  return c[:, DIGIT:, DIGIT:] - c[:, :-DIGIT, DIGIT:] - c[:, DIGIT:, :-DIGIT] + c[:, :-DIGIT, :-DIGIT]


def digit_windows(frames: np.ndarray) -> np.ndarray:
  """Top-left (row, col) int (M, 2) of the window holding the digit in each (M, H, W) [0, 1] frame.

  The window of largest total intensity; among those within ``TIE_TOLERANCE`` of it, the one whose
  content centroid is nearest the window's centre (then the first in row-major order).
  """
  num, size = len(frames), frames.shape[1]
  rows = np.arange(size, dtype=np.float64)[:, None]
  sums = _window_sums(frames).reshape(num, -1)
  row_moments = _window_sums(frames * rows).reshape(num, -1)
  col_moments = _window_sums(frames * rows.T).reshape(num, -1)
  span = size - DIGIT + 1
  top, left = np.divmod(np.arange(span * span), span)
  safe = np.where(sums > 0, sums, 1.0)
  middle = (DIGIT - 1) / 2
  off_centre = ((row_moments / safe - top - middle) ** 2 + (col_moments / safe - left - middle) ** 2)
  near_max = sums >= sums.max(1, keepdims=True) - TIE_TOLERANCE
  best = np.where(near_max, off_centre, np.inf).argmin(1)
  return np.stack([top[best], left[best]], 1)


def crop_digits(frames: np.ndarray) -> np.ndarray:
  """The located digit of each (M, H, W) [0, 1] frame: float32 (M, 8, 8, 1), the classifier's input."""
  corners = digit_windows(frames)
  windows = sliding_window_view(frames, (DIGIT, DIGIT), axis=(1, 2))
  crops = windows[np.arange(len(frames)), corners[:, 0], corners[:, 1]]
  return crops[..., None].astype(np.float32)


def centroids(frames: np.ndarray) -> np.ndarray:
  """Intensity-weighted centroid (row, col) float64 (M, 2) of (M, H, W) [0, 1] frames.

  A blank frame has no centroid; it gets the canvas centre, so blank clips count as still.
  """
  size = frames.shape[1]
  grid = np.arange(size, dtype=np.float64)
  mass = frames.sum((1, 2))
  row = np.einsum("mhw,h->m", frames, grid)
  col = np.einsum("mhw,w->m", frames, grid)
  centre = np.stack([row, col], 1) / np.where(mass > 0, mass, 1.0)[:, None]
  return np.where((mass > 0)[:, None], centre, (size - 1) / 2)


def frame_classes(videos: np.ndarray) -> np.ndarray:
  """The digit class of every frame of (N, F, H, W) [0, 1] videos (``to_unit_videos``' output):
  int (N, F), from the located digit of each frame."""
  num, num_frames, size, _ = videos.shape
  frames = videos.reshape((num * num_frames, size, size))
  preds, _ = quality.classify_unit_images(crop_digits(frames))
  return preds.reshape((num, num_frames))


def moving_digits_quality(samples, labels) -> dict[str, float]:
  """Scores class-conditional moving-digit videos frame by frame.

  Args:
    samples: (N, F, H, W[, 1]) videos, H = W >= 8, F >= 2: uint8 in [0, 255] (as in the sample
      npz) or float in [-1, 1] (as the model produces them).
    labels: (N,) the classes the videos were asked for.

  Returns:
    Plain floats: ``frame_accuracy``, ``identity``, ``identity_correct``, ``mean_speed`` (pixels
    per frame), ``moving_fraction`` (see the module docstring), ``num_samples`` and
    ``classifier_test_accuracy`` (the classifier's own held-out accuracy on 8x8 digits).
  """
  videos = to_unit_videos(samples)
  labels = np.asarray(labels).reshape(-1)
  num, num_frames, size, _ = videos.shape
  if len(labels) != num:
    raise ValueError(f"moving_digits_quality got {num} videos but {len(labels)} labels.")
  frames = videos.reshape((num * num_frames, size, size))
  preds = frame_classes(videos)
  same = np.all(preds == preds[:, :1], 1)
  steps = np.linalg.norm(np.diff(centroids(frames).reshape((num, num_frames, 2)), axis=1), axis=-1)
  return dict(
      frame_accuracy=float(np.mean(preds == labels[:, None])),
      identity=float(np.mean(same)),
      identity_correct=float(np.mean(same & (preds[:, 0] == labels))),
      mean_speed=float(np.mean(steps.mean(1))),
      moving_fraction=float(np.mean(steps.sum(1) > MOVING_THRESHOLD)),
      num_samples=float(num),
      classifier_test_accuracy=quality.load_classifier()[1],
  )
