"""Checks the moving-digits video source and the pipeline's video support against the spec.

References are independent of dit_jax.data.moving_digits: the motion is re-implemented here from
the spec's words (one axis at a time, plain integers), frames are built from scikit-learn's
`load_digits` directly, the split is dit_jax.quality._split's, and the motion rules (range, unit
steps, bounces only at the borders, 1/9 still) are checked as properties of the positions.
"""
import json
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dit_jax import data, quality
from dit_jax.data import moving_digits, sources, testing, transforms

CFG = dict(source="moving_digits")


@pytest.fixture(scope="module")
def sk():
  digits = load_digits()
  train, test = quality._split(len(digits.target), 0.2, seed=0)  # pylint: disable=protected-access
  return dict(images=(digits.images / 8.0 - 1.0).astype(np.float32), target=digits.target,
              train=train, test=test)


@pytest.fixture(scope="module")
def source():
  return moving_digits.MovingDigitsSource()


def _spec_positions(seed, index, num_frames, canvas):
  """The spec's motion, word by word: start and velocity drawn in that order, then per frame and
  per axis `pos += v`, and on leaving [0, canvas - 8] `v = -v` and the position reflected."""
  rng = np.random.default_rng([seed, index])
  high = canvas - 8
  start = rng.integers(0, high + 1, size=2)
  velocity = rng.integers(-1, 2, size=2)
  out = [[int(start[0]), int(start[1])]]
  pos, v = list(out[0]), [int(velocity[0]), int(velocity[1])]
  for _ in range(num_frames - 1):
    for axis in range(2):
      pos[axis] += v[axis]
      if pos[axis] < 0:
        v[axis], pos[axis] = -v[axis], -pos[axis]
      elif pos[axis] > high:
        v[axis], pos[axis] = -v[axis], 2 * high - pos[axis]
    out.append(list(pos))
  return np.array(out)


def _expected_video(sk, split, index, positions, canvas=16):
  """Frames built from load_digits directly: -1 canvas, the split's digit pasted at positions."""
  ids = sk[split]
  digit = sk["images"][ids[index % len(ids)]]
  frames = np.full((len(positions), canvas, canvas, 1), -1.0, np.float32)
  for f, (row, col) in enumerate(positions):
    frames[f, row:row + 8, col:col + 8, 0] = digit
  return frames, sk["target"][ids[index % len(ids)]]


@pytest.mark.parametrize("seed, num_frames, canvas", [(0, 8, 16), (3, 24, 11)])
def test_positions_follow_the_spec(seed, num_frames, canvas):
  src = moving_digits.MovingDigitsSource(num_frames=num_frames, canvas=canvas, videos_per_digit=1, seed=seed)
  for index in range(0, len(src), 7):
    pos = src.positions(index)
    np.testing.assert_array_equal(pos, _spec_positions(seed, index, num_frames, canvas))
    assert pos.shape == (num_frames, 2) and pos.min() >= 0 and pos.max() <= canvas - 8
    steps = np.diff(pos, axis=0)
    assert np.abs(steps).max() <= 1
    for axis in range(2):
      speeds = np.abs(steps[:, axis])
      assert speeds.min() == speeds.max()  # constant speed per axis
      turns = steps[1:, axis] != steps[:-1, axis]  # direction reversed between frame f and f+1
      at_border = np.isin(pos[1:-1, axis], (0, canvas - 8)) & (speeds[1:] > 0)
      np.testing.assert_array_equal(turns, at_border)  # bounces happen exactly at the borders


def test_a_ninth_stand_still_and_motion_reaches_every_direction(source):
  velocities = np.array([source.positions(i)[1] - source.positions(i)[0] for i in range(3000)])
  still = np.mean(np.all(velocities == 0, axis=1))
  assert abs(still - 1 / 9) < 0.025  # binomial std at n=3000 is 0.006
  # Frame 1 - frame 0 is v or a bounce (-v) from the border: every axis sees -1, 0 and +1.
  for axis in range(2):
    assert set(velocities[:, axis].tolist()) == {-1, 0, 1}


def test_deterministic_per_seed_and_index():
  a = moving_digits.MovingDigitsSource(seed=4, videos_per_digit=2)
  b = pickle.loads(pickle.dumps(moving_digits.MovingDigitsSource(seed=4, videos_per_digit=2)))
  other = moving_digits.MovingDigitsSource(seed=5, videos_per_digit=2)
  assert repr(a) == repr(b) == ("MovingDigitsSource(split='train', num_frames=8, canvas=16, "
                                "videos_per_digit=2, seed=4)")
  for index in (0, 17, len(a) - 1):
    np.testing.assert_array_equal(a[index]["x"], b[index]["x"])
  differs = [not np.array_equal(a.positions(i), other.positions(i)) for i in range(50)]
  assert np.mean(differs) > 0.8
  n = len(a) // 2  # index i and i + n show the same digit with other motion
  assert np.mean([not np.array_equal(a.positions(i), a.positions(i + n)) for i in range(50)]) > 0.8
  np.testing.assert_array_equal(a[3]["y"], a[3 + n]["y"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_frames_are_the_split_digit_at_its_positions(sk, split):
  src = moving_digits.MovingDigitsSource(split=split, videos_per_digit=3)
  assert len(src) == 3 * len(sk[split])
  for index in (0, 1, len(sk[split]) + 5, len(src) - 1):
    element = src[index]
    want_x, want_y = _expected_video(sk, split, index, src.positions(index))
    assert element["x"].dtype == np.float32 and element["y"].dtype == np.int32
    np.testing.assert_array_equal(element["x"], want_x)
    assert element["y"] == want_y and element["skipped"] == 0
  ys = np.array([src[i]["y"] for i in range(len(sk[split]))])
  np.testing.assert_array_equal(ys, sk["target"][sk[split]])


def test_split_matches_quality_and_is_disjoint(sk):
  train = moving_digits.split_indices(len(sk["target"]), "train")
  test = moving_digits.split_indices(len(sk["target"]), "test")
  np.testing.assert_array_equal(train, sk["train"])
  np.testing.assert_array_equal(test, sk["test"])
  assert not set(train.tolist()) & set(test.tolist())
  assert len(train) + len(test) == len(sk["target"])


def test_canvas_of_eight_keeps_the_digit_still(sk):
  src = moving_digits.MovingDigitsSource(canvas=8, num_frames=3, videos_per_digit=1)
  for index in range(20):
    np.testing.assert_array_equal(src.positions(index), np.zeros((3, 2)))
    np.testing.assert_array_equal(src[index]["x"], _expected_video(sk, "train", index, [(0, 0)] * 3, 8)[0])


def test_create_dataset_batches_and_process_count():
  cfg = dict(CFG, videos_per_digit=1, flip=True)
  src = moving_digits.MovingDigitsSource(videos_per_digit=1)
  rows = {src[i]["x"].tobytes(): src[i]["y"] for i in range(len(src))}
  single = iter(data.create_dataset(dict(CFG, videos_per_digit=1), global_batch_size=8, seed=1,
                                    process_index=0, process_count=1))
  batch = next(single)
  assert batch["x"].shape == (8, 8, 16, 16, 1) and batch["x"].dtype == np.float32
  assert batch["y"].shape == (8,) and batch["skipped"].sum() == 0
  for x, y in zip(batch["x"], batch["y"]):
    assert rows[x.tobytes()] == y  # flip is off by default: the source's videos
  make = lambda p, n: iter(data.create_dataset(cfg, global_batch_size=8, seed=1, process_index=p,  # noqa: E731
                                               process_count=n))
  one, parts = make(0, 1), [make(p, 2) for p in range(2)]
  for _ in range(3):
    want, got = next(one), [next(s) for s in parts]
    assert got[0]["x"].shape == (4, 8, 16, 16, 1)
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])


def test_flip_flips_width_of_every_frame_in_order():
  make = lambda flip: next(iter(data.create_dataset(  # noqa: E731
      dict(CFG, videos_per_digit=1, flip=flip), global_batch_size=64, seed=0, process_index=0,
      process_count=1)))
  plain, flipped = make(False), make(True)
  np.testing.assert_array_equal(plain["y"], flipped["y"])
  is_flipped = []
  for f, p in zip(flipped["x"], plain["x"]):
    mirrored = np.stack([frame[:, ::-1] for frame in p])  # each frame's W mirrored, same order
    assert np.array_equal(f, p) or np.array_equal(f, mirrored)
    is_flipped.append(not np.array_equal(f, p))
  assert 0.25 < np.mean(is_flipped) < 0.75
  image = np.arange(2 * 3 * 2).reshape(2, 3, 2)  # HWC: the flip still mirrors W of images
  rng = np.random.default_rng(0)
  while (out := transforms.maybe_flip(image, rng, True)) is image:  # until the coin says flip
    pass
  np.testing.assert_array_equal(out, image[:, ::-1, :])


def test_input_shape_and_is_video(tmp_path):
  assert data.input_shape(CFG) == (8, 16, 16, 1)
  assert data.input_shape(dict(CFG, image_size=24, num_frames=4)) == (4, 24, 24, 1)
  video = dict(source="videofolder", image_size=32, num_frames=6)
  assert data.input_shape(video) == (6, 32, 32, 3)
  (tmp_path / "config.json").write_text(json.dumps(testing.TINY_VAE_CONFIG))
  # TINY_VAE_CONFIG: two blocks (downsampling 2), 4 latent channels, per frame.
  assert data.input_shape(dict(video, vae=str(tmp_path))) == (6, 16, 16, 4)
  assert sources.is_video(CFG) and sources.is_video(video)
  assert not sources.is_video(dict(source="digits")) and not sources.is_video({})
  assert data.input_shape(dict(source="imagefolder", image_size=32)) == (32, 32, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(canvas=7), r"canvas=7 \(config.data.image_size\) must be at least 8"),
    (dict(num_frames=1), r"num_frames=1 \(config.data.num_frames\) must be at least 2"),
    (dict(split="val"), r"split='val' \(config.data.split\) is not one of \('train', 'test'\)"),
    (dict(videos_per_digit=0), r"videos_per_digit=0 \(config.data.videos_per_digit\)"),
    (dict(seed=-1), r"seed=-1 \(config.data.motion_seed\) must be non-negative"),
])
def test_bad_arguments_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    moving_digits.MovingDigitsSource(**kwargs)


def test_bad_config_fails_before_loading():
  with pytest.raises(ValueError, match=r"canvas=4 \(config.data.image_size\)"):
    data.input_shape(dict(CFG, image_size=4))
  with pytest.raises(ValueError, match=r"config.data.num_frames=0 must be at least 1"):
    sources.check_data_dir(dict(CFG, num_frames=0))
  with pytest.raises(ValueError, match=r"num_frames=1 \(config.data.num_frames\) must be at least 2"):
    sources.check_data_dir(dict(CFG, num_frames=1))  # the grid's motion score needs 2
  with pytest.raises(ValueError, match=r"config.data.num_frames=-2 must be at least 1"):
    data.input_shape(dict(source="videofolder", image_size=32, num_frames=-2))
  with pytest.raises(IndexError, match="outside"):
    moving_digits.MovingDigitsSource(videos_per_digit=1)[10**6]
