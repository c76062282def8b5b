"""Sample quality of the digit-pairs text default: does each half show the digit its prompt asks?

Samples of configs/digit_pairs.py are 8 x 16 canvases, a left digit in columns 0-7 and a right
digit in columns 8-15 (dit_jax/data/digit_pairs.py). Each 8-column half is classified with the
8x8 digit classifier of ``dit_jax.quality`` (the same weights, pixel convention and cache):

- ``left_accuracy`` / ``right_accuracy``: the fraction of samples whose left / right half is
  classified as the asked digit;
- ``pair_accuracy``: the fraction with both halves right (the issue's >= 0.85 target);
- ``swapped_accuracy``: the fraction of samples asking for two different digits that show them
  in the opposite order (the asked right digit on the left, and the left one on the right): the
  digits were drawn, the relation was misread.

``digit_pairs_quality(samples, left, right)`` returns them as plain floats, ready to be logged;
``prompts_quality(samples, prompts)`` reads (left, right) from the prompts and adds the pair
accuracy on held-out and on seen (phrasing, pair) combinations.
"""
import numpy as np

from dit_jax import quality
from dit_jax.data import digit_pairs

DIGIT = quality.IMAGE_SIZE


def halves(samples) -> tuple[np.ndarray, np.ndarray]:
  """The left and right 8x8 halves (N, 8, 8, 1) of (N, 8, 16[, 1]) samples, dtype kept."""
  samples = np.asarray(samples)
  shape = samples.shape
  if samples.ndim == 4 and shape[-1] == 1:
    samples = samples[..., 0]
  if samples.ndim != 3 or samples.shape[1:] != (DIGIT, 2 * DIGIT):
    raise ValueError(f"digit-pairs quality needs 1-channel (N, {DIGIT}, {2 * DIGIT}[, 1]) samples "
                     f"(two digits side by side), got shape {shape}.")
  return samples[:, :, :DIGIT, None], samples[:, :, DIGIT:, None]


def _classes(samples, left, right) -> tuple[np.ndarray, ...]:
  """(left class, right class) of each sample's halves and the asked (left, right): int (N,)."""
  left_half, right_half = halves(samples)
  left, right = np.asarray(left).reshape(-1), np.asarray(right).reshape(-1)
  if not len(left) == len(right) == len(left_half):
    raise ValueError(f"digit-pairs quality got {len(left_half)} samples but {len(left)} left and "
                     f"{len(right)} right digits.")
  if not len(left):
    raise ValueError("digit-pairs quality got no samples.")
  return quality.classify(left_half)[0], quality.classify(right_half)[0], left, right


def _scores(drawn_left, drawn_right, left, right) -> dict[str, float]:
  left_ok, right_ok = drawn_left == left, drawn_right == right
  swapped = (drawn_left == right) & (drawn_right == left) & (left != right)
  return dict(
      pair_accuracy=float(np.mean(left_ok & right_ok)),
      left_accuracy=float(np.mean(left_ok)),
      right_accuracy=float(np.mean(right_ok)),
      swapped_accuracy=float(np.mean(swapped)),
      num_samples=float(len(left_ok)),
      classifier_test_accuracy=quality.load_classifier()[1],
  )


def digit_pairs_quality(samples, left, right) -> dict[str, float]:
  """Scores digit-pair samples against the digits asked for.

  Args:
    samples: (N, 8, 16[, 1]) uint8 in [0, 255] (as in the sample npz) or float in [-1, 1].
    left, right: (N,) the digits asked for in the left and right halves.

  Returns:
    Plain floats: ``pair_accuracy``, ``left_accuracy``, ``right_accuracy``,
    ``swapped_accuracy``, ``num_samples`` and
    ``classifier_test_accuracy`` (the classifier's own held-out accuracy on single digits).
  """
  return _scores(*_classes(samples, left, right))


def prompts_quality(samples, prompts) -> dict[str, float]:
  """``digit_pairs_quality`` with (left, right) parsed from the prompts (digit_pairs' grammar),
  plus ``held_out_pair_accuracy`` / ``seen_pair_accuracy`` over the prompts whose (phrasing,
  pair) the train split leaves out / emits (each only when such prompts are present) and
  ``num_held_out``."""
  parsed = [digit_pairs.parse_with_phrasing(p) for p in prompts]
  drawn_left, drawn_right, left, right = _classes(
      samples, [p[0] for p in parsed], [p[1] for p in parsed])
  held_out = np.array([digit_pairs.is_held_out(*p) for p in parsed], bool)
  scores = _scores(drawn_left, drawn_right, left, right)
  both_right = (drawn_left == left) & (drawn_right == right)
  for name, rows in (("held_out", held_out), ("seen", ~held_out)):
    if rows.any():
      scores[f"{name}_pair_accuracy"] = float(np.mean(both_right[rows]))
  scores["num_held_out"] = float(held_out.sum())
  return scores
