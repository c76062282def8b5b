"""The grain input pipeline: source -> augment -> shuffle -> process shard -> repeat -> batch.

Order matters for three guarantees:
- Augmentation randomness (flip, posterior noise) is seeded by the element's global index
  (epoch * N + source index), because the random map sits directly on the source: the same
  example in the same epoch gets the same augmentation whatever the process count.
- The shuffle is global (same seed everywhere, reshuffled every epoch) and the stream is
  batched per process, whole batches dealt round-robin to the processes: process p's batch is rows
  [p*B/P, (p+1)*B/P) of the batch a single process would read, so shards are disjoint and the
  global batches (hence the trained model) do not depend on the process count.
- Everything is index-based (MapDataset), so the stream can start at any global batch
  (`start_step`): a run resumed at step s reads exactly the batches an uninterrupted run reads
  from s on, whatever the process count and data.num_workers before and after.
"""
from typing import Any

import grain
import numpy as np

from dit_jax.data import sources, transforms

_NUM_SEEDS = 2  # one for the shuffle, one for the per-example random maps


class FlipTransform(grain.transforms.RandomMap):
  """Random horizontal flip of `x` (per example, seeded), when enabled: the W axis of an image,
  or of all frames of a video together (frame order kept)."""

  def __init__(self, flip: bool):
    self.flip = flip

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    return dict(element, x=np.ascontiguousarray(transforms.maybe_flip(element["x"], rng, self.flip)))

  def __repr__(self) -> str:
    return f"FlipTransform(flip={self.flip})"


def _augmentation(data_cfg: Any, source_name: str) -> grain.transforms.RandomMap:
  """The per-example random transform for a source (flip, or posterior sampling for latents)."""
  if source_name == sources.SOURCE_LATENTS:
    from dit_jax.data import latents
    return latents.SampleLatents(
        flip=sources.field(data_cfg, "flip", True),
        latent_scale=sources.field(data_cfg, "latent_scale", latents.DEFAULT_LATENT_SCALE))
  digits = source_name in (sources.SOURCE_DIGITS, sources.SOURCE_MOVING_DIGITS,
                          sources.SOURCE_DIGIT_PAIRS)  # flips change digits
  return FlipTransform(sources.field(data_cfg, "flip", not digits))


def create_dataset(data_cfg: Any, *, global_batch_size: int, seed: int, process_index: int,
                   process_count: int, start_step: int = 0) -> grain.IterDataset:
  """Builds this process's infinite stream of batches, from global batch `start_step` on.

  Args:
    data_cfg: `config.data` (source, name, data_dir, split, image_size, flip, num_workers,
      latent_scale, vae; video sources: num_frames, and for moving_digits motion_seed and
      videos_per_digit; digit_pairs: pair_seed, pairs_per_digit, max_length; optional
      read_threads: grain's prefetch threads per process or worker, default 16).
    global_batch_size: batch over all processes; each process yields global / process_count.
    seed: data seed (shuffle order and augmentation).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    start_step: global batches already consumed (a resumed run's step): the stream starts with
      this process's rows of global batch `start_step`.

  Returns:
    A grain IterDataset; `iter()` gives a checkpointable DatasetIterator of
    `dict(x=float32 [B/P, H, W, C], y=int32 [B/P], skipped=int32 [B/P])`, x of shape
    [B/P, F, H, W, C] for video sources (`sources.is_video`), where `skipped` counts unreadable
    inputs replaced by the next readable one (sum it for the batch's count).
  """
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes; make it a multiple.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} is negative.")
  source_name = sources.field(data_cfg, "source", sources.SOURCE_DIGITS)
  source = sources.make_source(data_cfg)
  usable = len(source) - len(source) % process_count
  if usable == 0:
    raise ValueError(f"{source!r} has {len(source)} examples, fewer than the {process_count} "
                     "processes; point config.data at a non-empty dataset.")
  shuffle_seed, map_seed = np.random.SeedSequence(seed).generate_state(_NUM_SEEDS)
  ds = grain.MapDataset.source(source)
  ds = ds.random_map(_augmentation(data_cfg, source_name), seed=int(map_seed))
  ds = ds.shuffle(seed=int(shuffle_seed)).repeat()
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  ds = ds[start_step * process_count + process_index::process_count]
  read_threads = sources.field(data_cfg, "read_threads", 0)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads) if read_threads else None)
  num_workers = sources.field(data_cfg, "num_workers", 0)
  if num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter_ds


def input_shape(data_cfg: Any) -> tuple[int, ...]:
  """The shape of one example the model sees: batch["x"]'s shape without the batch axis,
  (H, W, C) for images and (F, H, W, C) for video sources; (H, W, C) is the VAE latent shape
  (per frame for video) when `data.vae` is set for on-the-fly encoding of a pixel source."""
  source_name = sources.field(data_cfg, "source", sources.SOURCE_DIGITS)
  if source_name == sources.SOURCE_DIGITS:
    size = sources.DIGITS_SIZE * sources.digits_upscale(data_cfg)
    return (size, size, 1)
  if source_name == sources.SOURCE_LATENTS:
    from dit_jax.data import latents
    return latents.latent_shape(data_cfg)
  if source_name == sources.SOURCE_MOVING_DIGITS:
    from dit_jax.data import moving_digits
    return moving_digits.shape_from_config(data_cfg)
  if source_name == sources.SOURCE_DIGIT_PAIRS:
    from dit_jax.data import digit_pairs
    return digit_pairs.shape_from_config(data_cfg)
  if source_name not in sources.SOURCES:
    raise ValueError(f"unknown config.data.source={source_name!r}; choose one of {sources.SOURCES}.")
  size = sources.field(data_cfg, "image_size", 0)
  if size <= 0:
    raise ValueError(f"config.data.image_size must be set for source={source_name!r} (e.g. 256).")
  vae_dir = sources.field(data_cfg, "vae", "")
  if vae_dir:
    from dit_jax.models import vae
    frame = vae.latent_shape(vae_dir, size)
  elif source_name == sources.SOURCE_TFDS:
    from dit_jax.data import tfds_source
    frame = (size, size, tfds_source.num_channels(data_cfg))
  else:
    frame = (size, size, 3)
  return (sources.num_frames(data_cfg), *frame) if sources.is_video(data_cfg) else tuple(frame)
