"""Tests of dit_jax.quality, the digits sample-quality metrics.

The Fréchet distance is dit_jax.evaluation.metrics' (tested there against pytorch-fid and
closed forms); here the classifier is checked against its held-out split of the real digits and
the metrics against inputs whose answer is known (real digits score like real digits, noise and a collapsed set do not).
"""
import numpy as np
import pytest

from dit_jax import quality


pytestmark = pytest.mark.usefixtures("fresh_classifier_cache")


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
