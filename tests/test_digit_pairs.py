"""Checks the digit-pairs text default: source, caption grammar, word tokenizer and pair metric.

References are independent of the modules under test: draws are re-implemented from the
docstring's words, canvases are pasted from scikit-learn's `load_digits` split by
dit_jax.quality._split, captions are written out by hand, token ids are counted by hand from the
vocabulary's order, and the metric is scored on real test digits pasted side by side here.
"""
import logging
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dit_jax import data, pair_quality, quality, text_vocab
from dit_jax.data import digit_pairs, sources

CFG = dict(source="digit_pairs")
PHRASINGS = ["left_of", "right_of", "and", "followed_by", "then"]
HAND_TEMPLATES = {  # the spec's phrasings, written out: (L, R) -> caption
    "left_of": lambda l, r: f"a {l} to the left of a {r}",
    "right_of": lambda l, r: f"a {r} to the right of a {l}",
    "and": lambda l, r: f"{l} and {r}",
    "followed_by": lambda l, r: f"a {l} followed by a {r}",
    "then": lambda l, r: f"{l} then {r}",
}
# Ids by hand: pad 0, </s> 1, <unk> 2, then "0".."9" -> 3..12, a 13, to 14, the 15, left 16,
# of 17, right 18, and 19, followed 20, by 21, then 22.
HAND_IDS = {w: i for i, w in enumerate(
    "<pad> </s> <unk> 0 1 2 3 4 5 6 7 8 9 a to the left of right and followed by then".split())}


pytestmark = pytest.mark.usefixtures("fresh_classifier_cache")


@pytest.fixture(scope="module")
def sk():
  digits = load_digits()
  train, test = quality._split(len(digits.target), 0.2, seed=0)  # pylint: disable=protected-access
  images = (digits.images / 8.0 - 1.0).astype(np.float32)
  by_class = {split: [images[ids][digits.target[ids] == c] for c in range(10)]
              for split, ids in (("train", train), ("test", test))}
  return dict(by_class=by_class, num=dict(train=len(train), test=len(test)))


@pytest.fixture(scope="module")
def train_source():
  return digit_pairs.DigitPairsSource()


@pytest.fixture(scope="module")
def test_source():
  return digit_pairs.DigitPairsSource(split="test")


def _spec_draw(sk, split, seed, index):
  """The docstring's draw, word by word: classes, phrasing among the allowed ones, left image,
  right image; returns (left, right, phrasing, canvas (8, 16, 1))."""
  rng = np.random.default_rng([seed, index])
  left, right = rng.integers(0, 10, size=2)
  allowed = [p for p in PHRASINGS if not (split == "train" and p == "right_of" and left > right)]
  phrasing = allowed[rng.integers(len(allowed))]
  left_pool, right_pool = sk["by_class"][split][left], sk["by_class"][split][right]
  left_image = left_pool[rng.integers(len(left_pool))]
  right_image = right_pool[rng.integers(len(right_pool))]
  canvas = np.full((8, 16, 1), np.nan, np.float32)
  canvas[:, 0:8, 0], canvas[:, 8:16, 0] = left_image, right_image
  return int(left), int(right), phrasing, canvas


def _hand_tokens(prompt, max_length=12):
  ids = [HAND_IDS[w] for w in prompt.split()] + [1]
  return np.array(ids + [0] * (max_length - len(ids)), np.int32)


@pytest.mark.parametrize("split, seed", [("train", 0), ("test", 3)])
def test_elements_follow_the_spec(sk, split, seed):
  src = digit_pairs.DigitPairsSource(split=split, seed=seed, pairs_per_digit=2)
  assert len(src) == 2 * sk["num"][split]
  for index in (0, 1, 2, 57, 700, len(src) - 1):
    left, right, phrasing, canvas = _spec_draw(sk, split, seed, index)
    element = src[index]
    assert set(element) == {"x", "y", "context", "context_mask", "left", "right", "skipped"}
    assert element["x"].dtype == np.float32 and element["x"].shape == (8, 16, 1)
    np.testing.assert_array_equal(element["x"], canvas)
    prompt = HAND_TEMPLATES[phrasing](left, right)
    assert src.prompt(index) == prompt
    np.testing.assert_array_equal(element["context"], _hand_tokens(prompt))
    np.testing.assert_array_equal(element["context_mask"], _hand_tokens(prompt) != 0)
    assert element["context"].dtype == np.int32 and element["context_mask"].dtype == bool
    for key, want in (("y", 0), ("left", left), ("right", right), ("skipped", 0)):
      assert element[key].dtype == np.int32 and element[key] == want


def test_deterministic_per_seed_and_index(train_source):
  a = digit_pairs.DigitPairsSource(seed=4, pairs_per_digit=2)
  b = pickle.loads(pickle.dumps(a))
  other = digit_pairs.DigitPairsSource(seed=5, pairs_per_digit=2)
  assert repr(b) == "DigitPairsSource(split='train', seed=4, pairs_per_digit=2, max_length=12)"
  for index in (0, 17, len(a) - 1):
    for key, value in a[index].items():
      np.testing.assert_array_equal(value, b[index][key])
  assert np.mean([a.prompt(i) != other.prompt(i) for i in range(100)]) > 0.8
  assert [train_source.prompt(i) for i in range(20)] == [
      digit_pairs.DigitPairsSource().prompt(i) for i in range(20)]


def test_pairs_and_phrasings_are_uniform(train_source):
  draws = [train_source.draw(i) for i in range(5000)]
  left = np.array([d[0] for d in draws])
  right = np.array([d[1] for d in draws])
  assert np.abs(np.bincount(left, minlength=10) / 5000 - 0.1).max() < 0.02  # binomial std 0.004
  assert np.abs(np.bincount(right, minlength=10) / 5000 - 0.1).max() < 0.02
  assert abs(np.corrcoef(left, right)[0, 1]) < 0.05
  assert {d[2] for d in draws} == set(PHRASINGS)


def test_caption_grammar_round_trip():
  for left in range(10):
    for right in range(10):
      for phrasing in PHRASINGS:
        prompt = digit_pairs.caption(left, right, phrasing)
        assert prompt == HAND_TEMPLATES[phrasing](left, right)
        assert digit_pairs.parse(prompt) == (left, right)
        assert digit_pairs.parse_with_phrasing(prompt) == (left, right, phrasing)
  assert digit_pairs.caption(3, 7, "left_of") == "a 3 to the left of a 7"
  assert digit_pairs.caption(3, 7, "right_of") == "a 7 to the right of a 3"
  assert digit_pairs.parse("  A 3 to THE left of a 7 ") == (3, 7)
  for bad in ("an 8 to the left of a 3", "a 10 to the left of a 3", "3 and", "a cat", "",
              "a x to the left of a 7"):
    with pytest.raises(ValueError, match=f"prompt {bad!r} is outside the digit-pairs grammar"):
      digit_pairs.parse(bad)
  with pytest.raises(ValueError, match="phrasing='below' is not one of"):
    digit_pairs.caption(1, 2, "below")
  with pytest.raises(ValueError, match="left=10, right=2"):
    digit_pairs.caption(10, 2, "and")


def test_exact_captions_occur_in_training(train_source):
  prompts = {train_source.prompt(i) for i in range(5000)}
  assert "a 3 to the left of a 7" in prompts and "a 7 to the right of a 3" in prompts
  assert "3 and 7" in prompts and "a 3 followed by a 7" in prompts and "3 then 7" in prompts


def test_held_out_combinations(train_source, test_source):
  hand_held_out = {f"a {r} to the right of a {l}" for l in range(10) for r in range(10) if l > r}
  assert set(digit_pairs.held_out_prompts()) == hand_held_out and len(hand_held_out) == 45
  assert "a 3 to the right of a 7" in hand_held_out
  train_prompts = {train_source.prompt(i) for i in range(5000)}
  assert not train_prompts & hand_held_out
  assert "a 7 to the right of a 3" in train_prompts  # the same pair, seen in the other order
  test_prompts = [test_source.prompt(i) for i in range(len(test_source))]
  seen_held_out = {p for p in test_prompts if p in hand_held_out}
  assert len(seen_held_out) == 45
  assert abs(np.mean([p in hand_held_out for p in test_prompts]) - 45 / 500) < 0.02


def test_evaluation_prompts_are_balanced():
  hand_held_out = set(digit_pairs.held_out_prompts())
  prompts = digit_pairs.evaluation_prompts(91, seed=2)
  assert len(prompts) == 91 and prompts == digit_pairs.evaluation_prompts(91, seed=2)
  assert prompts != digit_pairs.evaluation_prompts(91, seed=3)
  assert all(p in hand_held_out for p in prompts[0::2])
  assert not any(p in hand_held_out for p in prompts[1::2])
  assert set(prompts[0::2]) == hand_held_out  # 46 held-out slots cycle through all 45 first
  assert len(set(prompts[1::2])) == 45  # seen ones do not repeat within a cycle of 455
  for p in prompts:
    digit_pairs.parse(p)
  with pytest.raises(ValueError, match="n=0"):
    digit_pairs.evaluation_prompts(0)


def test_tokenizer_ids_padding_and_round_trip():
  tok = digit_pairs.tokenizer()
  assert tok.vocab_size == 23
  ids, mask = tok.encode(["a 3 to the left of a 7", "3 and 7", ""], max_length=12)
  np.testing.assert_array_equal(ids, [[13, 6, 14, 15, 16, 17, 13, 10, 1, 0, 0, 0],
                                      [6, 19, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                                      [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert tok.decode(ids[0]) == "a 3 to the left of a 7"
  assert repr(pickle.loads(pickle.dumps(tok))) == repr(tok)
  ids, _ = tok.encode(["A 9  FOLLOWED by a 0"], max_length=9)
  np.testing.assert_array_equal(ids, [[13, 12, 20, 21, 13, 3, 1, 0, 0]])


def test_tokenizer_truncates_and_flags_unknown_words(caplog):
  tok = digit_pairs.tokenizer()
  with caplog.at_level(logging.WARNING):
    ids, mask = tok.encode(["3 and 7", "a 3 to the left of a 7"], max_length=4)
  np.testing.assert_array_equal(ids, [[6, 19, 10, 1], [13, 6, 14, 1]])  # </s> kept last
  assert mask.all()
  assert "Prompt 1 ('a 3 to the left of a 7') has 9 tokens, more than max_length=4" in caplog.text
  assert "Prompt 0" not in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    ids, _ = tok.encode(["a 3 beside a 7"], max_length=6)
  np.testing.assert_array_equal(ids, [[13, 6, 2, 13, 10, 1]])
  assert "['beside']" in caplog.text and "Prompt 0" in caplog.text
  with pytest.raises(ValueError, match="encode got no prompts"):
    tok.encode([], max_length=12)
  with pytest.raises(TypeError, match="wrap it in a list"):
    tok.encode("3 and 7", max_length=12)
  with pytest.raises(ValueError, match="duplicates \\['a'\\]"):
    text_vocab.WordTokenizer(["a", "b", "a"])
  with pytest.raises(ValueError, match="bad words \\['two words'\\]"):
    text_vocab.WordTokenizer(["two words"])


def _real_pairs(sk, n, swap=False):
  """n pasted test-split pairs (float [-1, 1], (n, 8, 16, 1)) and their (left, right) classes."""
  rng = np.random.default_rng(0)
  left, right = rng.integers(0, 10, size=(2, n))
  pool = sk["by_class"]["test"]
  pick = lambda c: pool[c][rng.integers(len(pool[c]))]  # noqa: E731
  a, b = np.stack([pick(c) for c in left]), np.stack([pick(c) for c in right])
  x = np.concatenate([b, a] if swap else [a, b], axis=2)[..., None]
  return x, left, right


def test_pair_metric_on_real_swapped_and_noise(sk):
  x, left, right = _real_pairs(sk, 600)
  scores = pair_quality.digit_pairs_quality(x, left, right)
  assert scores["pair_accuracy"] >= 0.95, scores
  assert scores["left_accuracy"] >= 0.97 and scores["right_accuracy"] >= 0.97
  assert scores["num_samples"] == 600 and scores["classifier_test_accuracy"] > 0.97
  as_uint8 = np.round((x + 1.0) / 2.0 * 255.0).astype(np.uint8)[..., 0]
  assert pair_quality.digit_pairs_quality(as_uint8, left, right) == scores
  assert scores["swapped_accuracy"] < 0.03
  swapped = pair_quality.digit_pairs_quality(_real_pairs(sk, 600, swap=True)[0], left, right)
  assert swapped["pair_accuracy"] < 0.2, swapped  # only pairs with left == right survive (~0.1)
  # every pair of two different digits reads as swapped (about 0.9 of them)
  assert swapped["swapped_accuracy"] >= 0.95 * np.mean(left != right), swapped
  noise = np.random.default_rng(1).uniform(-1, 1, size=(600, 8, 16, 1))
  assert pair_quality.digit_pairs_quality(noise, left, right)["pair_accuracy"] < 0.1


def test_prompts_quality_splits_held_out(sk):
  prompts = digit_pairs.evaluation_prompts(100, seed=0)
  pool = sk["by_class"]["test"]
  pairs = [digit_pairs.parse(p) for p in prompts]
  x = np.stack([np.concatenate([pool[l][i % len(pool[l])], pool[r][i % len(pool[r])]], 1)
                for i, (l, r) in enumerate(pairs)])
  scores = pair_quality.prompts_quality(x, prompts)
  assert scores["num_held_out"] == 50 and scores["num_samples"] == 100
  assert scores["held_out_pair_accuracy"] >= 0.9 and scores["seen_pair_accuracy"] >= 0.9
  swapped = pair_quality.prompts_quality(np.concatenate([x[:, :, 8:], x[:, :, :8]], 2), prompts)
  assert swapped["held_out_pair_accuracy"] < 0.2
  with pytest.raises(ValueError, match="outside the digit-pairs grammar"):
    pair_quality.prompts_quality(x[:1], ["a cat"])


def test_pair_metric_shape_errors(sk):
  x, left, right = _real_pairs(sk, 4)
  with pytest.raises(ValueError, match=r"\(N, 8, 16\[, 1\]\) samples .* got shape \(4, 8, 8, 1\)"):
    pair_quality.digit_pairs_quality(x[:, :, :8], left, right)
  with pytest.raises(ValueError, match="got 4 samples but 3 left and 4 right"):
    pair_quality.digit_pairs_quality(x, left[:3], right)


def test_create_dataset_batches_tokens_and_mask(train_source):
  cfg = dict(CFG, pairs_per_digit=1)
  src = digit_pairs.DigitPairsSource(pairs_per_digit=1)
  rows = {src[i]["x"].tobytes(): src[i] for i in range(len(src))}
  batch = next(iter(data.create_dataset(cfg, global_batch_size=8, seed=1, process_index=0,
                                        process_count=1)))
  assert batch["x"].shape == (8, 8, 16, 1) and batch["x"].dtype == np.float32
  assert batch["context"].shape == (8, 12) and batch["context"].dtype == np.int32
  assert batch["context_mask"].shape == (8, 12) and batch["context_mask"].dtype == bool
  assert (batch["y"] == 0).all() and batch["skipped"].sum() == 0
  for i, x in enumerate(batch["x"]):
    row = rows[x.tobytes()]  # unflipped: the source's canvas, with its caption's tokens
    for key in ("context", "context_mask", "left", "right"):
      np.testing.assert_array_equal(batch[key][i], row[key])
  assert data.input_shape(CFG) == (8, 16, 1)
  wide = next(iter(data.create_dataset(dict(cfg, max_length=16), global_batch_size=2, seed=1,
                                       process_index=0, process_count=1)))
  assert wide["context"].shape == (2, 16)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), r"split='val' \(config.data.split\) is not one of \('train', 'test'\)"),
    (dict(seed=-1), r"seed=-1 \(config.data.pair_seed\) must be non-negative"),
    (dict(pairs_per_digit=0), r"pairs_per_digit=0 \(config.data.pairs_per_digit\)"),
    (dict(max_length=8), r"max_length=8 \(config.data.max_length\) must be at least 9"),
])
def test_bad_arguments_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    digit_pairs.DigitPairsSource(**kwargs)


def test_bad_config_fails_before_loading():
  with pytest.raises(ValueError, match=r"max_length=4 \(config.data.max_length\)"):
    data.input_shape(dict(CFG, max_length=4))
  with pytest.raises(ValueError, match=r"pairs_per_digit=0 \(config.data.pairs_per_digit\)"):
    sources.check_data_dir(dict(CFG, pairs_per_digit=0))
  with pytest.raises(ValueError, match=r"flip=True \(config.data.flip\)"):
    data.create_dataset(dict(CFG, flip=True), global_batch_size=2, seed=0, process_index=0,
                        process_count=1)
  with pytest.raises(IndexError, match="outside"):
    digit_pairs.DigitPairsSource(pairs_per_digit=1)[10**6]
  assert "digit_pairs" in sources.SOURCES
