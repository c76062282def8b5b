"""The numbers ADM's evaluator reports, from sample features and a reference."""
import logging
import math

from dit_jax.evaluation import features as features_lib
from dit_jax.evaluation import metrics
from dit_jax.evaluation import reference as reference_lib

INCEPTION_SCORE_SPLIT_SIZE = 5000  # ADM scores chunks of 5,000 samples (10 splits of 50,000)
PRECISION_RECALL_K = 3  # ADM's ManifoldEstimator neighbourhood size
SCORE_NAMES = ("fid", "sfid", "inception_score", "precision", "recall")


def score(feats: features_lib.Features, ref: reference_lib.Reference) -> dict:
  """FID, sFID, Inception score, precision and recall of the samples behind ``feats``.

  sFID needs the reference's spatial statistics and precision/recall its pool3 features; a
  reference without them gives None for those (with a warning naming what is missing).
  """
  mu, sigma = feats.pool_stats.mean_cov()
  out = dict(num_samples=feats.count, num_reference=ref.num_images)
  out["fid"] = metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma)
  if ref.mu_s is None:
    logging.warning("the reference has no spatial statistics (mu_s, sigma_s): no sFID.")
    out["sfid"] = None
  else:
    out["sfid"] = metrics.frechet_distance(*feats.spatial_stats.mean_cov(), ref.mu_s, ref.sigma_s)
  out["inception_score"] = metrics.inception_score(
      feats.logits, num_splits=math.ceil(feats.count / INCEPTION_SCORE_SPLIT_SIZE))
  if ref.pool is None:
    logging.warning("the reference has no images or pool features: no precision/recall.")
    out["precision"] = out["recall"] = None
  else:
    out["precision"], out["recall"] = metrics.precision_recall(
        ref.pool, feats.pool, k=PRECISION_RECALL_K)
  return out
