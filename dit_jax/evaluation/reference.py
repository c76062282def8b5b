"""Reference statistics: ADM's published reference batches, or computed from a dataset.

A reference is an npz with the keys of ADM's batches (``VIRTUAL_imagenet256_labeled.npz``):
``mu``, ``sigma`` (pool3 features, FID), ``mu_s``, ``sigma_s`` (spatial features, sFID) and/or
``arr_0`` (the reference images, uint8 NHWC). As ADM's evaluator does, statistics stored in the
file are used as they are and the images supply precision/recall (their pool3 features) and any
statistics the file lacks. The features computed from a reference's images are cached (keyed by
the file and the Inception weights) so repeated evaluations read them once. References computed
here (``make_reference``) also store ``pool``, the reference pool3 features, and ``num_images``.
"""
import dataclasses
import hashlib
import logging
import os

import numpy as np

from dit_jax import downloads
from dit_jax.evaluation import features as features_lib
from dit_jax.evaluation import npz_images

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
POOL_KEY = "pool"


@dataclasses.dataclass
class Reference:
  """Gaussian statistics of the reference features; ``pool`` (N, 2048) for precision/recall."""
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: np.ndarray | None = None
  sigma_s: np.ndarray | None = None
  pool: np.ndarray | None = None
  num_images: int | None = None

  @classmethod
  def from_features(cls, feats: features_lib.Features) -> "Reference":
    mu, sigma = feats.pool_stats.mean_cov()
    mu_s, sigma_s = feats.spatial_stats.mean_cov()
    return cls(mu, sigma, mu_s, sigma_s, feats.pool, feats.count)

  def save(self, path: str) -> None:
    arrays = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to other names
      np.savez(f, **arrays)


def params_fingerprint(params) -> str:
  """A short hash of the Inception weights (features computed with other weights differ)."""
  import jax  # local: keeps this module's import light
  digest = hashlib.sha1()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return digest.hexdigest()[:16]


def _cache_path(path: str, params) -> str:
  stat = os.stat(path)
  key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{params_fingerprint(params)}"
  name = f"reference-{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"
  return os.path.join(downloads.cache_dir(), name)


def read_reference_file(path: str) -> tuple[dict, bool]:
  """(the statistics stored in the file, whether it has images): a cheap check of a reference
  before any weights are loaded. Raises ValueError naming the file when it is unusable."""
  try:
    with np.load(path) as npz:
      stored = {k: npz[k] for k in (*STAT_KEYS, POOL_KEY, "num_images") if k in npz.files}
      has_images = npz_images.IMAGES_KEY in npz.files
      files = npz.files
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"reference {path} is not a readable npz file ({e}).") from e
  if ("mu" in stored) != ("sigma" in stored):
    raise ValueError(f"reference {path} has only one of 'mu' and 'sigma'; both are needed.")
  if "mu" not in stored and not has_images:
    raise ValueError(f"reference {path} has neither images ('arr_0') nor statistics ('mu', "
                     f"'sigma'); its arrays are {files}. Use ADM's reference batch or make one "
                     "with `python -m dit_jax.evaluate --make_reference`.")
  return stored, has_images


def load_reference(path: str, params=None, *, mesh=None, batch_size=None, progress=False,
                   use_cache: bool = True) -> Reference:
  """Reads a reference npz (see the module docstring); ``params`` (Inception weights) are needed
  when the file has images to extract features from (errors: ``read_reference_file``)."""
  stored, has_images = read_reference_file(path)
  num = stored.pop("num_images", None)
  if has_images and (POOL_KEY not in stored or "mu_s" not in stored):
    computed = _reference_features(path, params, mesh, batch_size, progress, use_cache)
    stored = {**dataclasses.asdict(computed), **stored}
    num = computed.num_images
  return Reference(stored["mu"], stored["sigma"], stored.get("mu_s"), stored.get("sigma_s"),
                   stored.get(POOL_KEY), None if num is None else int(num))


def _reference_features(path, params, mesh, batch_size, progress, use_cache) -> Reference:
  if params is None:
    raise ValueError(f"reference {path} holds images: pass the Inception weights to compute "
                     "their features.")
  cache = _cache_path(path, params) if use_cache else None
  if cache and os.path.exists(cache):
    logging.info("reference features of %s from the cache %s", path, cache)
    return load_reference(cache)
  images = npz_images.NpzImages(path)
  feats = features_lib.extract_from(images, params, mesh=mesh, batch_size=batch_size,
                                    progress="reference features" if progress else False)
  ref = Reference.from_features(feats)
  if cache:
    _save_process0(ref, cache)
  return ref


def _save_process0(ref: Reference, path: str) -> None:
  import jax  # local: keeps this module's import light
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  ref.save(tmp)
  os.replace(tmp, path)  # never a half-written cache entry


class SourceImages:
  """A dataset source of the project (``data.sources.make_source``) as uint8 images, read in
  order; the pixels are what the model was trained to produce (the same [-1, 1] -> uint8 rule
  as ``dit_jax.sample``), so the reference matches the samples' quantization."""

  def __init__(self, data_cfg, num_images: int | None = None):
    from dit_jax.data import sources  # local: pulls scikit-learn / tfds only when used
    if sources.field(data_cfg, "source", "") == sources.SOURCE_LATENTS:
      raise ValueError("a latent cache holds no images; compute the reference from the image "
                       "source (data.source=tfds or imagefolder) or use ADM's reference batch.")
    self._source = sources.make_source(data_cfg)
    self.name = repr(self._source)
    first = self._to_uint8(self._source[0]["x"][None])
    num = len(self._source) if num_images is None else min(num_images, len(self._source))
    self.shape = (num, *first.shape[1:])
    self.dtype = np.dtype(np.uint8)

  @staticmethod
  def _to_uint8(x: np.ndarray) -> np.ndarray:
    from dit_jax import sample  # local: the sampler's conversion rule, imported when used
    return np.asarray(sample.to_uint8(np.asarray(x, np.float32)))

  def read(self, start: int, stop: int) -> np.ndarray:
    return self._to_uint8(np.stack([self._source[i]["x"] for i in range(start, stop)]))


def make_reference(images, params, output: str, **kwargs) -> Reference:
  """Computes a reference from ``images`` (an array, NpzImages or SourceImages) into ``output``.

  ``kwargs`` go to ``features.extract_from`` (mesh, batch_size, progress).
  """
  ref = Reference.from_features(features_lib.extract_from(images, params, **kwargs))
  _save_process0(ref, output)
  return ref
