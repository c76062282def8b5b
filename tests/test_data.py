"""Checks the grain pipeline on the digits source against scikit-learn's data itself.

- The digits source equals sklearn's `load_digits` scaled to [-1, 1] (independent reference).
- Determinism: the same seed gives the same batches; another seed gives others.
- Per-process shards: for P processes the union of one epoch over all processes is exactly the
  dataset as a multiset (disjoint and covering), and epochs are reshuffled.
- Resume: an iterator restored from `get_state()` yields exactly the batches the original
  would have yielded next, with and without worker processes (mp_prefetch).
"""
import collections

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dit_jax import data

DIGITS = dict(source="digits")


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def _rows(x, y):
  return [(img.tobytes(), int(lbl)) for img, lbl in zip(x, y)]


def test_digits_values_shapes_and_input_shape():
  it = iter(data.create_dataset(DIGITS, global_batch_size=16, seed=0, process_index=0, process_count=1))
  batch = next(it)
  assert batch["x"].shape == (16, 8, 8, 1) and batch["x"].dtype == np.float32
  assert batch["y"].shape == (16,) and batch["y"].dtype == np.int32
  assert batch["skipped"].sum() == 0
  assert data.input_shape(DIGITS) == (8, 8, 1)
  assert data.input_shape(dict(source="digits", image_size=16)) == (16, 16, 1)
  digits = load_digits()
  reference = collections.Counter(_rows((digits.images / 8.0 - 1.0).astype(np.float32)[..., None], digits.target))
  for row in _rows(batch["x"], batch["y"]):
    assert row in reference  # flip is off by default for digits: raw images


def test_same_seed_same_batches_other_seed_differs():
  make = lambda seed: iter(data.create_dataset(  # noqa: E731
      dict(source="digits", flip=True), global_batch_size=32, seed=seed, process_index=0, process_count=1))
  _assert_same(_take(make(1), 5), _take(make(1), 5))
  assert not np.array_equal(next(make(1))["x"], next(make(2))["x"])


@pytest.mark.parametrize("process_count", [3, 8])
def test_process_shards_are_disjoint_and_cover_an_epoch(process_count):
  digits = load_digits()
  all_rows = collections.Counter(_rows((digits.images / 8.0 - 1.0).astype(np.float32)[..., None], digits.target))
  usable = len(digits.target) - len(digits.target) % process_count
  per_process = usable // process_count
  seen, second_epoch_first = collections.Counter(), []
  for p in range(process_count):
    it = iter(data.create_dataset(DIGITS, global_batch_size=process_count, seed=7,
                                  process_index=p, process_count=process_count))
    batches = _take(it, per_process + 1)  # batch of 1 per process: one epoch, then one more
    for b in batches[:-1]:
      seen.update(_rows(b["x"], b["y"]))
    second_epoch_first.append(batches[-1]["x"])
  assert sum(seen.values()) == usable
  assert not seen - all_rows  # every example seen belongs to the dataset, none twice too often
  if usable == len(digits.target):
    assert seen == all_rows  # exactly one epoch: disjoint and covering


def test_epochs_are_reshuffled():
  it = iter(data.create_dataset(DIGITS, global_batch_size=len(load_digits().target) - 1, seed=0,
                                process_index=0, process_count=1))
  first, second = next(it), next(it)
  assert not np.array_equal(first["y"], second["y"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_exact_next_batches(num_workers):
  cfg = dict(source="digits", flip=True, num_workers=num_workers)
  ds = data.create_dataset(cfg, global_batch_size=24, seed=5, process_index=1, process_count=2)
  it = iter(ds)
  _take(it, 7)
  state = it.get_state()
  expected = _take(it, 5)
  restored = iter(ds)
  restored.set_state(state)
  _assert_same(expected, _take(restored, 5))
  if num_workers:  # workers change the state format, not the data
    sequential = iter(data.create_dataset(dict(cfg, num_workers=0), global_batch_size=24, seed=5,
                                          process_index=1, process_count=2))
    _assert_same(_take(sequential, 12)[7:], expected)
    it.close()
    restored.close()


def test_flip_flips_about_half():
  cfg = dict(source="digits", flip=True)
  plain = next(iter(data.create_dataset(DIGITS, global_batch_size=512, seed=0, process_index=0, process_count=1)))
  flipped = next(iter(data.create_dataset(cfg, global_batch_size=512, seed=0, process_index=0, process_count=1)))
  np.testing.assert_array_equal(plain["y"], flipped["y"])  # flips do not change the order
  is_flipped = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
                for f, p in zip(flipped["x"], plain["x"])]
  is_same = [np.array_equal(f, p) for f, p in zip(flipped["x"], plain["x"])]
  assert all(a or b for a, b in zip(is_flipped, is_same))
  assert 0.35 < np.mean(is_flipped) < 0.65


def test_config_errors_name_the_problem():
  with pytest.raises(ValueError, match="global_batch_size=10 is not divisible"):
    data.create_dataset(DIGITS, global_batch_size=10, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="unknown config.data.source='mnist_typo'"):
    data.create_dataset(dict(source="mnist_typo"), global_batch_size=8, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="image_size=12 is not a multiple of 8"):
    data.input_shape(dict(source="digits", image_size=12))
