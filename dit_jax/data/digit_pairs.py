"""Digit pairs: two scikit-learn digits side by side, captioned from a small grammar (issue 16).

The text default trains on a CPU with no download and shows whether the model reads the caption:
an 8 x 16 x 1 canvas holds a left digit (columns 0-7) and a right digit (columns 8-15), scaled
to [-1, 1] as DigitsSource does, and the caption names them in one of five phrasings (numerals):

  left_of      "a {L} to the left of a {R}"      ("a 3 to the left of a 7")
  right_of     "a {R} to the right of a {L}"     ("a 7 to the right of a 3")
  and          "{L} and {R}"
  followed_by  "a {L} followed by a {R}"
  then         "{L} then {R}"

The article is always "a" (also before 8), so the grammar stays one template per phrasing.

- Held out of training (`is_held_out`): every right_of caption of a pair with L > R, e.g.
  "a 3 to the right of a 7" (the 45 pairs of distinct digits whose larger digit is on the left).
  Training sees those pairs in the four other phrasings and sees right_of only with the smaller
  digit on the left, so a held-out prompt names its digits in an order never seen with
  "right of": the model has to read the relation, not the order of the numerals.
  The train split never emits them; the test split and `held_out_prompts()` do.
- Deterministic per (seed, index): `rng = np.random.default_rng([seed, index])`, then
  `left, right = rng.integers(0, 10, size=2)` (classes, uniform and independent), then the
  phrasing `allowed[rng.integers(len(allowed))]` where `allowed` is PHRASINGS in order, without
  the held-out ones on the train split, then the left and right images as
  `rng.integers(count)` into the split's digits of that class (in split order), left first.
- Train/test split by source digit with dit_jax.quality's permutation (moving_digits'
  `split_indices`), so test pairs show digits the quality classifier never trained on.

An element: dict(x=float32 (8, 16, 1), y=int32 0 (text models' "use the caption" label),
context=int32 (max_length,) token ids, context_mask=bool (max_length,) (the
trainer passes both to the model: train_state.TEXT_KEYS), left=int32, right=int32, skipped=int32 0).
"""
from typing import Any

import numpy as np

from dit_jax import text_vocab
from dit_jax.data import sources
from dit_jax.data.moving_digits import split_indices

SOURCE = sources.SOURCE_DIGIT_PAIRS
SPLITS = ("train", "test")
SHAPE = (sources.DIGITS_SIZE, 2 * sources.DIGITS_SIZE, 1)
NUM_CLASSES = sources.DIGITS_CLASSES
DEFAULT_PAIRS_PER_DIGIT = 16
DEFAULT_MAX_LENGTH = 12
TEMPLATES = {
    "left_of": "a {left} to the left of a {right}",
    "right_of": "a {right} to the right of a {left}",
    "and": "{left} and {right}",
    "followed_by": "a {left} followed by a {right}",
    "then": "{left} then {right}",
}
PHRASINGS = tuple(TEMPLATES)
VOCAB = tuple(str(d) for d in range(NUM_CLASSES)) + (
    "a", "to", "the", "left", "of", "right", "and", "followed", "by", "then")
# Longest caption in tokens: its words and the end-of-sequence token.
MIN_MAX_LENGTH = max(len(t.split()) for t in TEMPLATES.values()) + 1


def is_held_out(left: int, right: int, phrasing: str) -> bool:
  """Whether the train split leaves out this (pair, phrasing): right_of with left > right."""
  return phrasing == "right_of" and left > right


def caption(left: int, right: int, phrasing: str) -> str:
  """The caption of a left and a right digit in one of PHRASINGS."""
  if phrasing not in TEMPLATES:
    raise ValueError(f"phrasing={phrasing!r} is not one of {PHRASINGS}.")
  if not (0 <= left < NUM_CLASSES and 0 <= right < NUM_CLASSES):
    raise ValueError(f"left={left}, right={right}: digits must be in [0, {NUM_CLASSES}).")
  return TEMPLATES[phrasing].format(left=int(left), right=int(right))


def parse_with_phrasing(prompt: str) -> tuple[int, int, str]:
  """(left, right, phrasing) of a caption of the grammar (lower-cased, any whitespace).

  Raises ValueError naming the prompt for text outside the grammar.
  """
  words = prompt.lower().split()
  for phrasing, template in TEMPLATES.items():
    pattern = template.split()
    if len(pattern) != len(words):
      continue
    digits = {}
    for want, word in zip(pattern, words):
      if want in ("{left}", "{right}") and len(word) == 1 and word.isdigit():
        digits[want[1:-1]] = int(word)
      elif want != word:
        break
    else:
      return digits["left"], digits["right"], phrasing
  raise ValueError(f"prompt {prompt!r} is outside the digit-pairs grammar; use one of "
                   f"{list(TEMPLATES.values())} with single-digit numerals, e.g. "
                   f"{caption(3, 7, 'left_of')!r}.")


def parse(prompt: str) -> tuple[int, int]:
  """(left, right) digits a caption asks for: the inverse of `caption`."""
  return parse_with_phrasing(prompt)[:2]


def held_out_prompts() -> list[str]:
  """Every held-out caption, by (left, right)."""
  return [caption(left, right, p) for left in range(NUM_CLASSES) for right in range(NUM_CLASSES)
          for p in PHRASINGS if is_held_out(left, right, p)]


def evaluation_prompts(n: int, seed: int = 0) -> list[str]:
  """`n` prompts for measuring a model (one a line makes a --prompts file): every other prompt,
  starting with the first, is a held-out combination, the others seen in training. Each group
  cycles through all its (pair, phrasing) combinations in an order shuffled by `seed` before
  repeating, so digits and phrasings are balanced."""
  if n < 1:
    raise ValueError(f"evaluation_prompts: n={n} must be at least 1.")
  rng = np.random.default_rng(seed)
  combos = [(left, right, p) for left in range(NUM_CLASSES) for right in range(NUM_CLASSES)
            for p in PHRASINGS]
  groups = [[c for c in combos if is_held_out(*c)], [c for c in combos if not is_held_out(*c)]]
  out, orders = [], [[], []]
  for i in range(n):
    group = i % 2
    if not orders[group]:
      orders[group] = [groups[group][j] for j in rng.permutation(len(groups[group]))]
    out.append(caption(*orders[group].pop()))
  return out


def tokenizer() -> text_vocab.WordTokenizer:
  """The word-level tokenizer over the grammar's vocabulary."""
  return text_vocab.WordTokenizer(VOCAB)


def check_args(split: str, seed: int, pairs_per_digit: int, max_length: int) -> None:
  """ValueError naming the argument (and its config.data field) for an unusable value."""
  problems = [
      (split not in SPLITS, f"split={split!r} (config.data.split) is not one of {SPLITS}"),
      (seed < 0, f"seed={seed} (config.data.pair_seed) must be non-negative"),
      (pairs_per_digit < 1, f"pairs_per_digit={pairs_per_digit} (config.data.pairs_per_digit) "
                            "must be at least 1"),
      (max_length < MIN_MAX_LENGTH, f"max_length={max_length} (config.data.max_length) must be "
                                    f"at least {MIN_MAX_LENGTH}, the longest caption's tokens"),
  ]
  for bad, message in problems:
    if bad:
      raise ValueError(f"digit_pairs: {message}.")


def _config_args(data_cfg: Any) -> dict:
  """DigitPairsSource's arguments from `config.data` (defaults as the constructor's)."""
  if sources.field(data_cfg, "flip", False):
    raise ValueError("digit_pairs: flip=True (config.data.flip) would mirror the digits and swap "
                     "left and right against the caption; set it to False.")
  return dict(split=sources.field(data_cfg, "split", "train"),
              seed=sources.field(data_cfg, "pair_seed", 0),
              pairs_per_digit=sources.field(data_cfg, "pairs_per_digit", DEFAULT_PAIRS_PER_DIGIT),
              max_length=sources.field(data_cfg, "max_length", DEFAULT_MAX_LENGTH))


def shape_from_config(data_cfg: Any) -> tuple[int, int, int]:
  """(8, 16, 1), after checking `config.data`'s digit-pairs fields without loading digits."""
  check_args(**_config_args(data_cfg))
  return SHAPE


class DigitPairsSource:
  """Random-access captioned digit pairs (see the module docstring for the element)."""

  def __init__(self, split: str = "train", seed: int = 0,
               pairs_per_digit: int = DEFAULT_PAIRS_PER_DIGIT,
               max_length: int = DEFAULT_MAX_LENGTH):
    check_args(split, seed, pairs_per_digit, max_length)
    digits = sources.DigitsSource()
    rows = [digits[int(i)] for i in split_indices(len(digits), split)]
    images = np.stack([row["x"][..., 0] for row in rows])
    labels = np.array([row["y"] for row in rows])
    self._by_class = [images[labels == c] for c in range(NUM_CLASSES)]
    self._num_digits = len(rows)
    self._allowed = [[[p for p in PHRASINGS if split == "test" or not is_held_out(left, right, p)]
                      for right in range(NUM_CLASSES)] for left in range(NUM_CLASSES)]
    self._tokenizer = tokenizer()
    self.split, self.seed, self.pairs_per_digit, self.max_length = (
        split, seed, pairs_per_digit, max_length)

  @classmethod
  def from_config(cls, data_cfg: Any) -> "DigitPairsSource":
    return cls(**_config_args(data_cfg))

  def __len__(self) -> int:
    return self._num_digits * self.pairs_per_digit

  def draw(self, index: int) -> tuple[int, int, str, int, int]:
    """(left, right, phrasing, left image, right image) of example `index`; images index the
    split's digits of their class, in split order."""
    if not 0 <= index < len(self):
      raise IndexError(f"{self!r}: index {index} is outside [0, {len(self)}).")
    rng = np.random.default_rng([self.seed, int(index)])
    left, right = (int(c) for c in rng.integers(0, NUM_CLASSES, size=2))
    allowed = self._allowed[left][right]
    phrasing = allowed[rng.integers(len(allowed))]
    left_image = int(rng.integers(len(self._by_class[left])))
    right_image = int(rng.integers(len(self._by_class[right])))
    return left, right, phrasing, left_image, right_image

  def prompt(self, index: int) -> str:
    """The caption of example `index`."""
    left, right, phrasing, _, _ = self.draw(index)
    return caption(left, right, phrasing)

  def __getitem__(self, index: int) -> dict:
    left, right, phrasing, left_image, right_image = self.draw(index)
    x = np.concatenate([self._by_class[left][left_image], self._by_class[right][right_image]], 1)
    tokens, mask = self._tokenizer.encode([caption(left, right, phrasing)], self.max_length)
    return dict(x=x[..., None], y=np.int32(0), context=tokens[0], context_mask=mask[0],
                left=np.int32(left), right=np.int32(right), skipped=np.int32(0))

  def __repr__(self) -> str:
    return (f"DigitPairsSource(split={self.split!r}, seed={self.seed}, "
            f"pairs_per_digit={self.pairs_per_digit}, max_length={self.max_length})")
