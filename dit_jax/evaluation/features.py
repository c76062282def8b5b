"""Inception features of many images: batch-sharded over the device mesh, streamed batch by batch.

Each global batch is split over the mesh's batch axes (``data``, ``fsdp``) with the Inception
parameters replicated; every process feeds only the rows its devices hold (so in a multi-host
evaluation each host reads only its slice of the sample file) and receives the features of the
whole batch back (replicated output), which it folds into float64 running statistics. The
numbers therefore do not depend on the device or host count. Short last batches are padded with
black images whose features are dropped, so every batch runs the same compiled program.
"""
import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import sharding
from dit_jax.evaluation import inception
from dit_jax.evaluation import metrics

DEFAULT_BATCH_PER_DEVICE = 32
ACCEPTED_CHANNELS = (1, 3)  # grayscale is fed as RGB (R = G = B), as torch-fidelity does


def check_images(shape: tuple[int, ...], dtype, what: str) -> None:
  """Raises ValueError naming ``what`` unless the images are uint8 (N, H, W, 1 or 3), N > 0."""
  problems = []
  if len(shape) != 4:
    problems.append(f"shape {tuple(shape)} is not (N, H, W, C)")
  elif shape[-1] not in ACCEPTED_CHANNELS:
    problems.append(f"{shape[-1]} channels (need 3, RGB, or 1, grayscale)")
  if np.dtype(dtype) != np.uint8:
    problems.append(f"dtype {np.dtype(dtype)} (need uint8 pixels 0..255, as dit_jax.sample and "
                    "ADM's tools write them)")
  if len(shape) == 4 and shape[0] == 0:
    problems.append("no images")
  if problems:
    raise ValueError(f"{what}: " + "; ".join(problems) + ".")


def default_batch_size(mesh: jax.sharding.Mesh, num_images: int) -> int:
  """DEFAULT_BATCH_PER_DEVICE per batch shard, but no more than the images need."""
  shards = sharding.batch_shard_count(mesh)
  per_shard = min(DEFAULT_BATCH_PER_DEVICE, math.ceil(num_images / shards))
  return shards * max(per_shard, 1)


def process_rows(batch_sharding: jax.sharding.NamedSharding, batch_size: int) -> slice:
  """The rows of a global batch that this process's devices hold (contiguous for our meshes)."""
  indices = batch_sharding.addressable_devices_indices_map((batch_size,)).values()
  starts = [index[0].start or 0 for index in indices]
  stops = [batch_size if index[0].stop is None else index[0].stop for index in indices]
  lo, hi = min(starts), max(stops)
  if sum(b - a for a, b in set(zip(starts, stops))) != hi - lo:
    raise ValueError("this process's rows of the batch are not contiguous; build the mesh with "
                     "sharding.create_mesh (devices in process order).")
  return slice(lo, hi)


@functools.lru_cache(maxsize=4)
def _jitted_extract(mesh: jax.sharding.Mesh, precision):
  def extract(params, images):
    if images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)
    return inception.extract_features(params, images, precision=precision)
  return jax.jit(extract, out_shardings=sharding.replicated(mesh))


@dataclasses.dataclass
class Features:
  """What the metrics need from a set of images: running statistics of the pool3 and sFID
  features, and the pool3 features and logits themselves (precision/recall, Inception score)."""
  pool_stats: metrics.FeatureStats
  spatial_stats: metrics.FeatureStats
  pool: np.ndarray
  logits: np.ndarray

  @property
  def count(self) -> int:
    return len(self.pool)


class FeatureExtractor:
  """Accumulates Inception features over global batches of ``batch_size`` images.

  Call ``add(read_rows, n)`` once per global batch of ``n <= batch_size`` real images, on every
  process in the same order; ``read_rows(lo, hi)`` returns rows lo..hi-1 of that batch (uint8,
  only the rows this process feeds are asked for). ``result()`` gives the Features.
  """

  def __init__(self, params, image_shape: tuple[int, int, int], *, mesh=None, batch_size=None,
               num_images: int | None = None, precision=jax.lax.Precision.HIGHEST):
    self.mesh = mesh or sharding.create_mesh({"data": -1})
    self.batch_size = batch_size or default_batch_size(self.mesh, num_images or 1)
    shards = sharding.batch_shard_count(self.mesh)
    if self.batch_size % shards:
      raise ValueError(f"batch_size={self.batch_size} is not a multiple of the {shards} devices "
                       f"the batch is split over; use a multiple of {shards}.")
    check_images((1, *image_shape), np.uint8, "images")
    self.image_shape = tuple(image_shape)
    self._sharding = sharding.batch_sharding(self.mesh)
    self._rows = process_rows(self._sharding, self.batch_size)
    self._params = jax.device_put(params, sharding.replicated(self.mesh))
    self._extract = _jitted_extract(self.mesh, precision)
    self._stats = {}  # "pool" / "spatial" -> FeatureStats, made at the first batch
    self._pool, self._logits = [], []

  def add(self, read_rows: Callable[[int, int], np.ndarray], n: int) -> None:
    if not 0 < n <= self.batch_size:
      raise ValueError(f"a batch holds 1..{self.batch_size} images, got {n}.")
    lo, hi = self._rows.start, self._rows.stop
    local = np.zeros((hi - lo, *self.image_shape), np.uint8)
    if min(hi, n) > lo:
      rows = np.asarray(read_rows(lo, min(hi, n)))
      if rows.shape[1:] != self.image_shape or rows.dtype != np.uint8:
        raise ValueError(f"images of shape {rows.shape[1:]} {rows.dtype} in a run of "
                         f"{self.image_shape} uint8 images.")
      local[:len(rows)] = rows
    images = jax.make_array_from_process_local_data(
        self._sharding, local, (self.batch_size, *self.image_shape))
    feats = self._extract(self._params, images)
    feats = {k: np.asarray(v.addressable_data(0))[:n] for k, v in feats.items()}
    for name in ("pool", "spatial"):
      self._stats.setdefault(name, metrics.FeatureStats(feats[name].shape[1])).update(feats[name])
    self._pool.append(feats["pool"])
    self._logits.append(feats["logits"])

  def add_images(self, images: np.ndarray) -> None:
    """Adds a batch that every process holds in full (e.g. samples just generated)."""
    self.add(lambda lo, hi: images[lo:hi], len(images))

  def result(self) -> Features:
    if not self._pool:
      raise ValueError("no images were added.")
    return Features(self._stats["pool"], self._stats["spatial"], np.concatenate(self._pool),
                    np.concatenate(self._logits))


def extract_from(images, params, *, mesh=None, batch_size=None, progress: bool | str = False,
                 precision=jax.lax.Precision.HIGHEST) -> Features:
  """Features of all images of ``images`` (an array or an ``npz_images.NpzImages``: anything with
  ``shape``, ``dtype`` and ``read(start, stop)``/slicing), read batch by batch.

  ``progress``: show a progress bar on process 0 (a string is its description). ``precision``:
  of the Inception's convolutions (full float32 by default; see ``inception.extract_features``).
  """
  check_images(images.shape, images.dtype, getattr(images, "name", "images"))
  read = images.read if hasattr(images, "read") else (lambda a, b: images[a:b])
  num = images.shape[0]
  extractor = FeatureExtractor(params, images.shape[1:], mesh=mesh, batch_size=batch_size,
                               num_images=num, precision=precision)
  starts = range(0, num, extractor.batch_size)
  if progress:
    from tqdm import tqdm  # local: only command lines show a bar
    starts = tqdm(starts, desc=progress if isinstance(progress, str) else "Inception features",
                  unit="batch", disable=jax.process_index() != 0)
  for start in starts:
    n = min(extractor.batch_size, num - start)
    extractor.add(lambda lo, hi, start=start: read(start + lo, start + hi), n)
  return extractor.result()
