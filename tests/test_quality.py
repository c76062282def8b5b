"""Tests of dit_jax.quality, the digits sample-quality metrics.

The Fréchet distance is checked against closed forms (1-D Gaussians, commuting covariances,
identity vs. a rotated diagonal covariance) and against scipy's matrix square root; the
classifier against its held-out split of the real digits; the metrics against inputs whose
answer is known (real digits score like real digits, noise and a collapsed set do not).
"""
import numpy as np
import pytest
import scipy.linalg

from dit_jax import quality


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
  # A fresh cache directory: the classifier is trained (deterministically) then reused.
  mp = pytest.MonkeyPatch()
  mp.setenv(quality.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
  quality.load_classifier.cache_clear()
  quality.real_reference.cache_clear()
  yield
  mp.undo()
  quality.load_classifier.cache_clear()
  quality.real_reference.cache_clear()


def _rotation(dim, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
  return q


def test_frechet_1d():
  # W2^2 between N(m1, s1^2) and N(m2, s2^2) = (m1 - m2)^2 + (s1 - s2)^2.
  assert quality.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_commuting_diagonal():
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert quality.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_identity_vs_rotated():
  # FD(N(0, I), N(0, Q diag(l) Q^T)) = sum (1 - sqrt(l))^2 for any rotation Q.
  lam = np.array([0.5, 2.0, 3.0, 0.1, 1.0])
  q = _rotation(5, 0)
  sigma = q @ np.diag(lam) @ q.T
  expected = np.sum((1.0 - np.sqrt(lam)) ** 2)
  assert quality.frechet_distance(np.zeros(5), np.eye(5), np.zeros(5), sigma) == pytest.approx(expected)


def test_frechet_matches_scipy_sqrtm_on_generic_covariances():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = a @ a.T, b @ b.T
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert quality.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
  assert quality.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_mean_pairwise_distance():
  pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
  assert quality.mean_pairwise_distance(pts) == pytest.approx((5.0 + 4.0 + 3.0) / 3)


def test_classifier_held_out_accuracy_and_cache():
  params, acc = quality.load_classifier()
  assert acc >= 0.97, f"digit classifier held-out accuracy {acc:.4f} is too low to judge samples"
  assert quality._cache_path().exists()
  quality.load_classifier.cache_clear()
  cached, cached_acc = quality.load_classifier()
  assert cached_acc == acc
  np.testing.assert_array_equal(cached["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_digits_quality_separates_real_noise_and_collapse():
  images, labels = quality.real_digits()
  idx = np.random.default_rng(0).choice(len(labels), 300, replace=False)
  real_u8 = np.round(images[idx] * 255).astype(np.uint8)
  real = quality.digits_quality(real_u8, labels[idx])
  assert real["accuracy"] >= 0.97
  assert 0.9 <= real["variety_ratio"] <= 1.1
  # The same images as floats in the model's [-1, 1] range give the same scores.
  as_float = quality.digits_quality(real_u8.astype(np.float32) / 127.5 - 1.0, labels[idx])
  assert as_float["accuracy"] == real["accuracy"]
  assert as_float["fd"] == pytest.approx(real["fd"], rel=1e-4)

  noise = np.random.default_rng(1).uniform(-1, 1, size=(300, 8, 8)).astype(np.float32)
  noisy = quality.digits_quality(noise, labels[idx])
  assert noisy["accuracy"] < 0.3
  assert noisy["fd"] > 10 * real["fd"]

  collapsed = quality.digits_quality(np.repeat(real_u8[:1], 300, axis=0), labels[idx])
  assert collapsed["variety_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_digits_quality_rejects_wrong_shapes():
  with pytest.raises(ValueError, match="8x8"):
    quality.digits_quality(np.zeros((4, 16, 16, 3), np.uint8), np.zeros(4, int))
  with pytest.raises(ValueError, match="labels"):
    quality.digits_quality(np.zeros((4, 8, 8, 1), np.uint8), np.zeros(3, int))
