"""dit_jax.evaluation.metrics against pytorch-fid, closed forms and brute-force numpy/scikit-learn."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from dit_jax.evaluation import metrics


def pytorch_fid_distance(*args):
  """pytorch-fid 0.3.0's calculate_frechet_distance (scipy's sqrtm, as ADM's evaluator)."""
  from pytorch_fid.fid_score import calculate_frechet_distance  # pylint: disable=import-outside-toplevel
  return float(calculate_frechet_distance(*args))


def correlated_features(rng, num, dim, shift=0.0):
  """Non-negative, correlated rows like pool3 features (ReLU of a random linear map of Gaussians)."""
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  return np.maximum(rng.normal(size=(num, dim)) @ mixing + shift, 0.0)


# --- Fréchet distance -------------------------------------------------------------------------------

@pytest.mark.parametrize("num,dim", [(400, 32), (20, 32)])  # full-rank and rank-deficient covariances
def test_frechet_distance_matches_pytorch_fid(num, dim):
  rng = np.random.default_rng(num)
  stats1 = metrics.mean_cov(correlated_features(rng, num, dim))
  stats2 = metrics.mean_cov(correlated_features(rng, num, dim, shift=0.3))
  ours = metrics.frechet_distance(*stats1, *stats2)
  reference = pytorch_fid_distance(*stats1, *stats2)
  assert isinstance(ours, float) and ours > 0.1
  np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  var1, var2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)), expected,
                             rtol=1e-12)
  # Scalars are one-dimensional Gaussians.
  assert metrics.frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_frechet_distance_closed_form_for_a_rotated_covariance():
  # FD(N(0, I), N(0, Q diag(l) Q^T)) = sum (1 - sqrt(l))^2 for any rotation Q.
  lam = np.array([0.5, 2.0, 3.0, 0.1, 1.0])
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
  expected = np.sum((1.0 - np.sqrt(lam)) ** 2)
  assert metrics.frechet_distance(np.zeros(5), np.eye(5), np.zeros(5), q @ np.diag(lam) @ q.T) == (
      pytest.approx(expected, rel=1e-10))


def test_frechet_distance_of_a_set_with_itself_is_zero():
  features = correlated_features(np.random.default_rng(2), 300, 48)
  mu, sigma = metrics.mean_cov(features)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-12 * np.trace(sigma)
  few = metrics.mean_cov(features[:20])  # rank-deficient: still ~0 (sqrtm: ~1e-5 of the trace)
  assert abs(metrics.frechet_distance(*few, *few)) < 1e-12 * np.trace(few[1])


def test_frechet_distance_errors():
  # Not covariances (an eigenvalue of -1): sqrt(sigma1 sigma2) does not exist.
  indefinite = np.array([[0.0, 1.0], [1.0, 0.0]])
  for first, second, name in ((indefinite, np.eye(2), "sigma1"), (np.eye(2), indefinite, "sigma2")):
    with pytest.raises(ValueError, match=rf"{name} is not positive semi-definite \(eigenvalue -1\)"):
      metrics.frechet_distance(np.zeros(2), first, np.zeros(2), second)
  with pytest.raises(ValueError, match=r"means must be 1-D of equal length, got shapes \(3,\) and \(4,\)"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r"must be \(3, 3\) to match the means, got \(3, 3\) and \(2, 2\)"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match="sigma2 contains NaN or infinite values"):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))


# --- Inception score --------------------------------------------------------------------------------

def adm_inception_score(logits, split_size):
  """ADM's compute_inception_score: softmax, consecutive chunks of split_size, exp(mean KL) averaged."""
  preds = np.exp(logits - logits.max(1, keepdims=True))
  preds /= preds.sum(1, keepdims=True)
  scores = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores)


@pytest.mark.parametrize("num,num_splits", [(200, 4), (120, 1)])
def test_inception_score_matches_adm(num, num_splits):
  logits = np.random.default_rng(num).normal(scale=3.0, size=(num, 50)).astype(np.float32)
  expected = adm_inception_score(logits.astype(np.float64), num // num_splits)
  np.testing.assert_allclose(metrics.inception_score(logits, num_splits), expected, rtol=1e-10)


def test_inception_score_uneven_chunks_are_consecutive_and_nearly_equal():
  logits = np.random.default_rng(3).normal(scale=3.0, size=(7, 5))
  chunks = [logits[0:3], logits[3:5], logits[5:7]]
  expected = np.mean([adm_inception_score(chunk, len(chunk)) for chunk in chunks])
  np.testing.assert_allclose(metrics.inception_score(logits, num_splits=3), expected, rtol=1e-10)


def test_inception_score_closed_forms():
  assert metrics.inception_score(np.zeros((40, 1008)), num_splits=4) == pytest.approx(1.0, abs=1e-12)
  # Confident predictions spread evenly over C classes within each chunk: IS = C.
  num_classes = 8
  confident = 100.0 * np.eye(num_classes)[np.arange(80) % num_classes]
  assert metrics.inception_score(confident, num_splits=10) == pytest.approx(num_classes, rel=1e-12)


def test_inception_score_errors():
  with pytest.raises(ValueError, match=r"between 1 and the number of samples \(5\), got 6"):
    metrics.inception_score(np.zeros((5, 3)), num_splits=6)
  with pytest.raises(ValueError, match=r"logits must be a 2-D array \(num_samples, num_features\)"):
    metrics.inception_score(np.zeros(5))


# --- Precision and recall ---------------------------------------------------------------------------

def brute_force_precision_recall(real, fake, k):
  """Kynkaanniemi et al.: k-NN radii (the point itself included at distance 0) from scikit-learn."""
  def radii(points):
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return distances[:, k] ** 2
  dist = cdist(real, fake, "sqeuclidean")
  precision = np.any(dist <= radii(real)[:, None], axis=0).mean()
  recall = np.any(dist <= radii(fake)[None, :], axis=1).mean()
  return precision, recall


@pytest.mark.parametrize("num_real,num_fake,k,block_size", [
    (37, 29, 3, 10_000),  # one block each
    (37, 29, 3, 8),       # several blocks, neither size a multiple of the block
    (29, 37, 1, 5),
    (40, 23, 5, 20),      # real a multiple of the block, fake not
])
def test_precision_recall_matches_brute_force(num_real, num_fake, k, block_size):
  rng = np.random.default_rng(num_real * 100 + num_fake + k)
  real = correlated_features(rng, num_real, 16).astype(np.float32)
  fake = correlated_features(rng, num_fake, 16, shift=0.4).astype(np.float32)
  precision, recall = metrics.precision_recall(real, fake, k=k, block_size=block_size)
  expected = brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64), k)
  assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0, (precision, recall)
  assert (precision, recall) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("block_size", [1, 2, 10_000])
def test_precision_recall_by_hand(block_size):
  """Points on a line, k=1: real 0, 1, 3 have squared radii 1, 1, 4; fake 0.5, 1.5, 8, 9 have 1, 1, 1, 1.

  Fake 0.5 and 1.5 lie in real balls (1.5 in two), 8 and 9 in none: precision 1/2. Real 0 and 1 lie
  in the balls of fake 0.5 and 1.5, real 3 in none: recall 2/3.
  """
  line = lambda xs: np.stack([np.asarray(xs, np.float32), np.zeros(len(xs), np.float32)], 1)
  assert metrics.precision_recall(line([0, 1, 3]), line([0.5, 1.5, 8, 9]), k=1,
                                  block_size=block_size) == pytest.approx((0.5, 2 / 3))
  # A point exactly on a ball's boundary is inside (<=): fake 5 is at squared distance 4 from real 3.
  # Fake squared radii 0.25, 0.25, 210.25 reach no real point.
  assert metrics.precision_recall(line([0, 1, 3]), line([5, 5.5, 20]), k=1,
                                  block_size=block_size) == pytest.approx((1 / 3, 0.0))


def test_precision_recall_identical_and_disjoint_sets():
  features = correlated_features(np.random.default_rng(4), 50, 24).astype(np.float32)
  assert metrics.precision_recall(features, features, block_size=16) == (1.0, 1.0)
  assert metrics.precision_recall(features, features + 100.0, block_size=16) == (0.0, 0.0)


def test_precision_recall_errors():
  features = np.zeros((10, 4), np.float32)
  with pytest.raises(ValueError, match="needs more than k=3 points in each set, got 10 real and 3 fake"):
    metrics.precision_recall(features, features[:3])
  with pytest.raises(ValueError, match="fake_pool has 5 features per row, expected 4"):
    metrics.precision_recall(features, np.zeros((10, 5)))
  with pytest.raises(ValueError, match="k must be at least 1, got 0"):
    metrics.precision_recall(features, features, k=0)


# --- Streaming statistics ---------------------------------------------------------------------------

def test_feature_stats_over_uneven_batches_equal_one_shot_numpy():
  # A large offset against a small spread: a raw sum-of-squares accumulator would lose digits here.
  features = (correlated_features(np.random.default_rng(5), 100, 12) * 0.01 + 50.0).astype(np.float32)
  stats = metrics.FeatureStats(12)
  for start, stop in [(0, 1), (1, 8), (8, 8), (8, 41), (41, 43), (43, 100)]:
    stats.update(features[start:stop])
  mu, sigma = stats.mean_cov()
  assert stats.count == 100 and mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, np.mean(features.astype(np.float64), 0), rtol=1e-14)
  np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-18)
  one_shot = metrics.mean_cov(features)
  np.testing.assert_allclose(one_shot[1], sigma, rtol=1e-9, atol=1e-18)


def test_feature_stats_merge_and_save_load(tmp_path):
  features = correlated_features(np.random.default_rng(6), 60, 7)
  shard1 = metrics.FeatureStats(7).update(features[:25])
  shard2 = metrics.FeatureStats(7).update(features[25:50])
  shard1.save(tmp_path / "shard1.npz")
  restored = metrics.FeatureStats.load(tmp_path / "shard1.npz")
  assert restored.count == 25
  restored.merge(shard2).merge(metrics.FeatureStats(7)).update(features[50:])
  mu, sigma = restored.mean_cov()
  np.testing.assert_allclose(mu, features.mean(0), rtol=1e-13)
  np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-12, atol=1e-15)


def test_feature_stats_errors(tmp_path):
  stats = metrics.FeatureStats(4)
  with pytest.raises(ValueError, match="a covariance needs at least 2 samples, got 1"):
    stats.update(np.ones((1, 4))).mean_cov()
  with pytest.raises(ValueError, match="batch has 3 features per row, expected 4"):
    stats.update(np.ones((2, 3)))
  with pytest.raises(ValueError, match=r"batch must be a 2-D array \(num_samples, .*got shape \(4,\)"):
    stats.update(np.ones(4))
  with pytest.raises(ValueError, match="batch contains NaN or infinite values"):
    stats.update(np.full((2, 4), np.nan))
  with pytest.raises(ValueError, match="cannot merge statistics of 5 features into statistics of 4"):
    stats.merge(metrics.FeatureStats(5))
  with pytest.raises(ValueError, match="a covariance needs at least 2 samples, got 1"):
    metrics.mean_cov(np.ones((1, 4)))
  np.savez(tmp_path / "reference.npz", mu=np.zeros(4), sigma=np.eye(4))
  with pytest.raises(ValueError, match="holds no FeatureStats: missing count, mean, m2"):
    metrics.FeatureStats.load(tmp_path / "reference.npz")
