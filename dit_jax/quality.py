"""Sample quality of the digits default: classifier accuracy, Fréchet distance, per-class variety.

The default config trains on scikit-learn's 8x8 handwritten digits, where FID's Inception network
does not apply. This module trains a small MLP classifier on the real digits instead (fixed seed, a few
seconds on a CPU, cached on disk) and measures class-conditional samples with it:

- ``accuracy``: the fraction of samples the classifier assigns to the label they were asked for;
- ``fd``: the Fréchet distance between Gaussians fitted to the classifier's penultimate features
  of the samples and of all real digits (FID's formula on a digits feature space);
- ``variety``: the mean pairwise feature distance between samples of the same class, averaged
  over classes; ``variety_ratio`` divides it by the same figure for the real digits, so ~1 means
  real-data variety and values near 0 mean mode collapse.

``digits_quality(samples, labels)`` returns all of them as plain floats, ready to be logged.
"""
import functools
import hashlib
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import serialization

from dit_jax.evaluation import metrics

NUM_CLASSES = 10
IMAGE_SIZE = 8
HIDDEN_DIM = 256
FEATURE_DIM = 64
# Classifier recipe; any change here changes the cache key, so stale weights are never reused.
CLASSIFIER_RECIPE = dict(seed=0, test_fraction=0.2, epochs=40, batch_size=64, learning_rate=2e-3,
                         weight_decay=1e-4, hidden_dim=HIDDEN_DIM, feature_dim=FEATURE_DIM, version=2)
CACHE_ENV = "DIT_JAX_CACHE"


class DigitClassifier(nn.Module):
  """MLP 64 -> 256 -> FEATURE_DIM -> 10 over [0, 1] images of shape (N, 8, 8, 1).

  Returns (logits, features); the features (penultimate ReLU layer) feed the Fréchet distance
  and the variety measure. An MLP reaches the held-out accuracy of a small CNN on these 8x8
  images (~98.6%) and trains in about a second on a CPU.
  """

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(HIDDEN_DIM)(x.reshape((x.shape[0], -1))))
    features = nn.relu(nn.Dense(FEATURE_DIM)(x))
    return nn.Dense(NUM_CLASSES)(features), features


def real_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 scikit-learn digits as float32 [0, 1] images (N, 8, 8, 1) and int labels (N,)."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return images, digits.target.astype(np.int32)


def _split(num: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed).permutation(num)
  num_test = int(round(num * test_fraction))
  return perm[num_test:], perm[:num_test]


def to_unit_images(samples) -> np.ndarray:
  """Brings samples to the classifier's input: float32 [0, 1], shape (N, 8, 8, 1).

  uint8 samples (the npz that ``dit_jax.sample`` writes) are divided by 255; float samples are
  taken to be in the model's [-1, 1] pixel range and clipped. Accepts (N, 8, 8), (N, 8, 8, 1)
  or flattened (N, 64).
  """
  samples = np.asarray(samples)
  if samples.dtype == np.uint8:
    images = samples.astype(np.float32) / 255.0
  else:
    images = np.clip((samples.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
  if images.size != len(images) * IMAGE_SIZE * IMAGE_SIZE:
    raise ValueError(
        f"digits quality needs 1-channel {IMAGE_SIZE}x{IMAGE_SIZE} images, got shape "
        f"{samples.shape}; it only applies to samples of the digits config.")
  return images.reshape((len(images), IMAGE_SIZE, IMAGE_SIZE, 1))


def _cache_path() -> pathlib.Path:
  root = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dit_jax")
  key = hashlib.sha256(repr(sorted(CLASSIFIER_RECIPE.items())).encode()).hexdigest()[:12]
  return pathlib.Path(root) / f"digit_classifier_{key}.msgpack"


def train_classifier(recipe=None):
  """Trains the classifier on the training split with a fixed seed; returns (params, test_acc).

  Deterministic: the split, init and batch order all come from ``recipe["seed"]``.
  """
  recipe = dict(CLASSIFIER_RECIPE if recipe is None else recipe)
  images, labels = real_digits()
  train_idx, test_idx = _split(len(images), recipe["test_fraction"], recipe["seed"])
  model = DigitClassifier()
  rng = jax.random.PRNGKey(recipe["seed"])
  params = model.init(rng, images[:1])["params"]
  steps_per_epoch = len(train_idx) // recipe["batch_size"]
  schedule = optax.cosine_decay_schedule(recipe["learning_rate"], recipe["epochs"] * steps_per_epoch)
  tx = optax.adamw(schedule, weight_decay=recipe["weight_decay"])
  opt_state = tx.init(params)

  @jax.jit
  def epoch(params, opt_state, order):
    def step(carry, idx):
      params, opt_state = carry
      def loss_fn(p):
        logits, _ = model.apply({"params": p}, jnp.asarray(images)[idx])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)[idx]).mean()
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    batches = order[:steps_per_epoch * recipe["batch_size"]].reshape((steps_per_epoch, -1))
    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state

  order_rng = np.random.default_rng(recipe["seed"])
  for _ in range(recipe["epochs"]):
    params, opt_state = epoch(params, opt_state, jnp.asarray(order_rng.permutation(train_idx)))
  params = jax.device_get(params)
  test_acc = float(np.mean(_predict(params, images[test_idx])[0] == labels[test_idx]))
  return params, test_acc


@functools.lru_cache(maxsize=1)
def load_classifier():
  """Returns (params, held-out accuracy): from the on-disk cache, else trained and cached.

  The cache lives in ``$DIT_JAX_CACHE`` (default ``~/.cache/dit_jax``), keyed by the recipe.
  """
  path = _cache_path()
  if path.exists():
    state = serialization.msgpack_restore(path.read_bytes())
    return state["params"], float(state["test_accuracy"])
  params, test_acc = train_classifier()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  tmp.write_bytes(serialization.msgpack_serialize({"params": params, "test_accuracy": test_acc}))
  tmp.replace(path)  # Atomic: concurrent processes never read a half-written file.
  return params, test_acc


@jax.jit
def _apply(params, images):
  logits, features = DigitClassifier().apply({"params": params}, images)
  return jnp.argmax(logits, -1), features


def _predict(params, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  # Run on one device so results do not depend on how many devices the caller has.
  with jax.default_device(jax.local_devices()[0]):
    preds, features = _apply(params, jnp.asarray(images))
  return np.asarray(preds), np.asarray(features, dtype=np.float64)


def classify(samples) -> tuple[np.ndarray, np.ndarray]:
  """Returns (predicted class (N,), penultimate features (N, FEATURE_DIM) float64)."""
  return classify_unit_images(to_unit_images(samples))


def classify_unit_images(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``classify`` of images already in the classifier's input form (``to_unit_images``' output:
  float32 [0, 1], (N, 8, 8, 1)), such as the digits that dit_jax.video_quality crops."""
  params, _ = load_classifier()
  return _predict(params, images)


def mean_pairwise_distance(features: np.ndarray) -> float:
  """Mean Euclidean distance over distinct pairs of rows (0 for fewer than two rows)."""
  if len(features) < 2:
    return 0.0
  sq = np.sum(features ** 2, 1)
  d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * features @ features.T, 0.0, None)
  n = len(features)
  return float(np.sqrt(d2)[~np.eye(n, dtype=bool)].mean())


def per_class_variety(features: np.ndarray, labels: np.ndarray) -> dict[int, float]:
  """Mean pairwise feature distance within each class that has at least two members."""
  return {int(c): mean_pairwise_distance(features[labels == c])
          for c in np.unique(labels) if np.sum(labels == c) >= 2}


@functools.lru_cache(maxsize=1)
def real_reference():
  """Features, Gaussian statistics and per-class variety of all real digits (computed once)."""
  images, labels = real_digits()
  params, _ = load_classifier()
  _, features = _predict(params, images)
  return features, metrics.mean_cov(features), per_class_variety(features, labels)


def digits_quality(samples, labels) -> dict[str, float]:
  """Scores class-conditional digit samples against the real digits.

  Args:
    samples: (N, 8, 8[, 1]) uint8 in [0, 255] (as in the sample npz) or float in [-1, 1]
      (as the model produces them).
    labels: (N,) the classes the samples were asked for.

  Returns:
    Plain floats: ``accuracy`` (classifier agrees with the asked label), ``fd`` (Fréchet
    distance of classifier features to the real digits; lower is better), ``variety`` and
    ``real_variety`` (mean within-class pairwise feature distance, averaged over the classes
    present), ``variety_ratio`` (their quotient; ~1 is real-data variety), ``num_samples`` and
    ``classifier_test_accuracy`` (the classifier's own held-out accuracy).
  """
  labels = np.asarray(labels).reshape(-1)
  preds, features = classify(samples)
  if len(labels) != len(preds):
    raise ValueError(f"digits_quality got {len(preds)} samples but {len(labels)} labels.")
  if len(features) < 2:
    raise ValueError("digits_quality needs at least 2 samples to estimate a covariance.")
  _, (mu_real, sigma_real), real_var = real_reference()
  sample_var = per_class_variety(features, labels)
  classes = [c for c in sample_var if c in real_var]
  variety = float(np.mean([sample_var[c] for c in classes])) if classes else 0.0
  real_variety = float(np.mean([real_var[c] for c in classes])) if classes else 0.0
  return dict(
      accuracy=float(np.mean(preds == labels)),
      fd=metrics.frechet_distance(*metrics.mean_cov(features), mu_real, sigma_real),
      variety=variety,
      real_variety=real_variety,
      variety_ratio=variety / real_variety if real_variety else 0.0,
      num_samples=float(len(labels)),
      classifier_test_accuracy=load_classifier()[1],
  )


def scorer(source: str):
  """The sample-quality function ``f(samples, labels) -> dict`` of a built-in data source:
  ``digits_quality`` for "digits", ``video_quality.moving_digits_quality`` for "moving_digits",
  ``pair_quality.prompts_quality`` for "digit_pairs" (its second argument: the prompts); None
  for any other source (FID and the ADM scores are dit_jax.evaluation's)."""
  # Local imports: those modules import this one.
  if source == "digits":
    return digits_quality
  if source == "moving_digits":
    from dit_jax import video_quality
    return video_quality.moving_digits_quality
  if source == "digit_pairs":
    from dit_jax import pair_quality
    return pair_quality.prompts_quality
  return None
