"""Tests of dit_jax.video_quality, the moving-digits sample-quality metrics.

References are independent of the module: videos are built here by pasting real scikit-learn test
digits (never seen by the classifier) at known positions with known velocities, so the expected
motion is closed form (the centroid of a translated image moves by the translation), and the
expected identity of hand-edited clips is known.
"""
import numpy as np
import pytest

from dit_jax import quality
from dit_jax import video_quality

CANVAS = 16
FRAMES = 8


pytestmark = pytest.mark.usefixtures("fresh_classifier_cache")


@pytest.fixture(scope="module")
def test_digits():
  """The classifier's held-out digits: float [0, 1] (N, 8, 8) and labels (N,)."""
  images, labels = quality.real_digits()
  test_idx = quality._split(len(labels), 0.2, 0)[1]
  return images[test_idx, ..., 0], labels[test_idx]


def paste_video(digit, start, velocity, bounce=True):
  """(FRAMES, CANVAS, CANVAS) [0, 1] clip of `digit` starting at `start`, moving by `velocity`."""
  high = CANVAS - 8
  pos, vel = np.array(start), np.array(velocity)
  video = np.zeros((FRAMES, CANVAS, CANVAS))
  for frame in video:
    frame[pos[0]:pos[0] + 8, pos[1]:pos[1] + 8] = digit
    pos = pos + vel
    if bounce:
      vel = np.where((pos < 0) | (pos > high), -vel, vel)
      pos = np.where(pos < 0, -pos, np.where(pos > high, 2 * high - pos, pos))
  return video


def to_uint8(videos):
  return np.round(videos * 255).astype(np.uint8)


def random_videos(digits, seed):
  rng = np.random.default_rng(seed)
  return np.stack([paste_video(d, rng.integers(0, CANVAS - 7, 2), rng.integers(-1, 2, 2))
                   for d in digits])


def test_centroids_closed_form():
  frames = np.zeros((3, CANVAS, CANVAS))
  frames[0, 3, 11] = 1.0
  frames[1, 2, 4], frames[1, 8, 10] = 1.0, 0.5  # weights 2:1 -> (2*2 + 8) / 3, (2*4 + 10) / 3
  np.testing.assert_allclose(video_quality.centroids(frames),
                             [[3, 11], [4, 6], [7.5, 7.5]], atol=1e-12)


def test_real_test_digits_score_high_and_dtypes_agree(test_digits):
  digits, labels = test_digits
  videos = to_uint8(random_videos(digits, seed=0))
  scores = video_quality.moving_digits_quality(videos, labels)
  assert scores["frame_accuracy"] >= 0.95, scores
  assert scores["identity"] >= 0.9, scores
  assert scores["identity_correct"] >= 0.9, scores
  assert scores["num_samples"] == len(labels)
  assert scores["classifier_test_accuracy"] >= 0.97
  # Velocities uniform in {-1, 0, 1}^2: mean speed is (4 * 1 + 4 * sqrt(2)) / 9 ~ 1.07 in
  # expectation, and 8 / 9 of the clips move.
  assert scores["mean_speed"] == pytest.approx((4 + 4 * np.sqrt(2)) / 9, abs=0.1), scores
  assert scores["moving_fraction"] == pytest.approx(8 / 9, abs=0.06), scores
  # The same videos as floats in [-1, 1], with a channel axis, give the same numbers.
  as_float = video_quality.moving_digits_quality(
      (videos.astype(np.float32) / 127.5 - 1.0)[..., None], labels)
  assert as_float.keys() == scores.keys()
  for key, value in scores.items():
    assert as_float[key] == pytest.approx(value, rel=1e-5), key


def test_constant_velocity_speed(test_digits):
  digits, labels = test_digits
  diagonal = np.stack([paste_video(d, (0, 0), (1, 1), bounce=False) for d in digits[:20]])
  scores = video_quality.moving_digits_quality(to_uint8(diagonal), labels[:20])
  assert scores["mean_speed"] == pytest.approx(np.sqrt(2), abs=0.05)
  assert scores["moving_fraction"] == 1.0
  # Bouncing off the bottom (rows 7, 8, 7, 6, ...) keeps a speed of one pixel per frame.
  bouncing = np.stack([paste_video(d, (7, 3), (1, 0)) for d in digits[:20]])
  scores = video_quality.moving_digits_quality(to_uint8(bouncing), labels[:20])
  assert scores["mean_speed"] == pytest.approx(1.0, abs=0.05)


def test_still_videos(test_digits):
  digits, labels = test_digits
  still = np.stack([paste_video(d, (4, 5), (0, 0)) for d in digits[:20]])
  scores = video_quality.moving_digits_quality(to_uint8(still), labels[:20])
  assert scores["mean_speed"] == 0.0
  assert scores["moving_fraction"] == 0.0
  assert scores["identity"] == 1.0


def test_swapped_frames_break_identity(test_digits):
  digits, labels = test_digits
  preds, _ = quality.classify(digits)
  # Pairs of correctly classified digits of different classes.
  right = np.flatnonzero(preds == labels)[:40]
  first, second = right[:20], right[20:]
  first, second = first[labels[first] != labels[second]], second[labels[first] != labels[second]]
  assert len(first) >= 10
  pairs = np.concatenate([first, second])
  videos = np.stack([paste_video(digits[i], (2, 3), (1, 0)) for i in pairs])
  swapped = videos.copy()
  n = len(first)
  swapped[:n, 3], swapped[n:, 3] = videos[n:, 3], videos[:n, 3]
  asked = labels[pairs]
  intact = video_quality.moving_digits_quality(to_uint8(videos), asked)
  broken = video_quality.moving_digits_quality(to_uint8(swapped), asked)
  assert intact["identity"] == intact["identity_correct"] == 1.0
  assert broken["identity"] == broken["identity_correct"] == 0.0
  assert broken["frame_accuracy"] == pytest.approx(7 / 8)


def test_noise_scores_low():
  noise = np.random.default_rng(1).uniform(-1, 1, (100, FRAMES, CANVAS, CANVAS)).astype(np.float32)
  labels = np.arange(100) % 10
  scores = video_quality.moving_digits_quality(noise, labels)
  assert scores["frame_accuracy"] < 0.3, scores
  assert scores["identity_correct"] < 0.1, scores


def test_rejects_wrong_shapes():
  labels = np.zeros(4, int)
  with pytest.raises(ValueError, match="digits_quality"):  # images, not videos
    video_quality.moving_digits_quality(np.zeros((4, 8, 8, 1), np.uint8), labels)
  with pytest.raises(ValueError, match="1-channel"):
    video_quality.moving_digits_quality(np.zeros((4, FRAMES, 16, 16, 3), np.uint8), labels)
  with pytest.raises(ValueError, match="canvas of at least 8x8"):
    video_quality.moving_digits_quality(np.zeros((4, FRAMES, 6, 6), np.uint8), labels)
  with pytest.raises(ValueError, match="at least 2 frames"):
    video_quality.moving_digits_quality(np.zeros((4, 1, 16, 16), np.uint8), labels)
  with pytest.raises(ValueError, match="labels"):
    video_quality.moving_digits_quality(np.zeros((4, FRAMES, 16, 16), np.uint8), labels[:3])


def test_moving_digits_test_split_reaches_the_targets():
  # Issue 15's targets for samples must be reachable by the real data they imitate.
  from dit_jax.data import moving_digits  # pylint: disable=import-outside-toplevel
  source = moving_digits.MovingDigitsSource(split="test")
  rows = [source[i] for i in range(720)]
  scores = video_quality.moving_digits_quality(np.stack([r["x"] for r in rows]),
                                               np.array([r["y"] for r in rows]))
  assert scores["frame_accuracy"] >= 0.9, scores
  assert scores["identity"] >= 0.85, scores
  assert scores["mean_speed"] <= 1.5, scores
  assert scores["moving_fraction"] >= 0.8, scores
  # The motion the metric measures is the motion the source made (positions are top-left corners;
  # the centroid moves with them).
  steps = np.stack([np.linalg.norm(np.diff(source.positions(i), axis=0), axis=1).mean()
                    for i in range(720)])
  assert scores["mean_speed"] == pytest.approx(steps.mean(), abs=1e-6), scores
