"""Input-pipeline throughput per host: the latents cache and imagefolder JPEG decoding.

  python -m dit_jax.data.bench_pipeline                       # synthetic data in a temp dir
  python -m dit_jax.data.bench_pipeline --latents_dir CACHE --image_dir /data/imagenet/train

Prints steady-state samples/s of `create_dataset` batches (one process's share; process_count=1)
for each `--num_workers` value, and for the in-process case also samples per CPU-second (a
load-independent measure on a shared machine). Without --latents_dir a synthetic 256-px cache (32x32x4 float32 posteriors
of image and flip, the ImageNet layout) is written; without --image_dir synthetic 500x375 JPEGs
(ImageNet's typical size) are written and ADM-cropped to 256.
"""
import argparse
import atexit
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from dit_jax import data
from dit_jax.data import latents

DEFAULT_READ_THREADS = 16  # grain's ReadOptions default


def write_synthetic_cache(cache_dir: str, num_records: int, latent_shape=(32, 32, 4), dtype="float32") -> str:
  from array_record.python.array_record_module import ArrayRecordWriter  # local: tool-only
  latents.write_meta(cache_dir, dict(image_size=latent_shape[0] * latents.SD_VAE_FACTOR,
                                     latent_shape=list(latent_shape), dtype=dtype, num_shards=1))
  rng = np.random.RandomState(0)
  path = latents.shard_path(cache_dir, 0, 1)
  writer = ArrayRecordWriter(path, latents.WRITER_OPTIONS)
  for i in range(num_records):
    moments = rng.normal(size=(2, 2, *latent_shape)).astype(dtype)
    writer.write(latents.encode_record(i % 1000, moments))
  writer.close()
  with open(path + latents.DONE_SUFFIX, "w") as f:
    f.write("{}")
  return cache_dir


def write_synthetic_jpegs(root: str, num_images: int, size=(500, 375)) -> str:
  """Smooth random images with noise (JPEG-compressible like photos), 10 classes."""
  rng = np.random.RandomState(0)
  yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
  for i in range(num_images):
    class_dir = os.path.join(root, f"n{i % 10:08d}")
    os.makedirs(class_dir, exist_ok=True)
    a, b, c = rng.uniform(0.005, 0.05, 3)
    base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
    img = np.clip(127.5 * (base + 1) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(class_dir, f"{i}.JPEG"), quality=90)
  return root


def measure(data_cfg: dict, batch_size: int, num_batches: int) -> tuple[float, float]:
  """Steady-state (samples per wall second, samples per CPU second of this process).

  Each prefetch thread computes whole batches, so the first `read_threads` batches arrive
  together; they are skipped (warm-up) before timing `num_batches` more.
  """
  it = iter(data.create_dataset(data_cfg, global_batch_size=batch_size, seed=0, process_index=0, process_count=1))
  for _ in range(data_cfg.get("read_threads") or DEFAULT_READ_THREADS):
    next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(it)
  samples = batch_size * num_batches
  rates = samples / (time.perf_counter() - wall), samples / (time.process_time() - cpu)
  it.close()
  return rates


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--latents_dir", default="", help="existing cache (default: synthetic)")
  parser.add_argument("--latents_dtype", default="float32", choices=["float32", "float16"],
                      help="storage dtype of the synthetic cache")
  parser.add_argument("--image_dir", default="", help="existing image folder (default: synthetic)")
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_batches", type=int, default=20)
  parser.add_argument("--image_batch_size", type=int, default=32)
  parser.add_argument("--image_batches", type=int, default=6, help="batches for the slower image path")
  parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 2])
  parser.add_argument("--read_threads", type=int, default=os.cpu_count(),
                      help="config.data.read_threads (grain prefetch threads per process / worker)")
  args = parser.parse_args(argv)
  from absl import flags  # grain's worker processes read absl flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # Removed at exit, after grain's prefetch threads (still finishing in-flight batches) end.
  tmp = tempfile.mkdtemp()
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  cache = args.latents_dir or write_synthetic_cache(
      os.path.join(tmp, "latents"), 8 * args.batch_size, dtype=args.latents_dtype)
  images = args.image_dir or write_synthetic_jpegs(os.path.join(tmp, "images"), 512)
  print(f"host: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
        f"read_threads {args.read_threads}")
  runs = [(f"latents 256 px {args.latents_dtype} (read + flip + posterior sample)", dict(source="latents", data_dir=cache, flip=True),
           args.batch_size, args.num_batches),
          (f"imagefolder (JPEG decode + ADM crop {args.image_size} + flip)",
           dict(source="imagefolder", data_dir=images, image_size=args.image_size, flip=True),
           args.image_batch_size, args.image_batches)]
  for name, cfg, batch_size, batches in runs:
    for workers in args.num_workers:
      wall, cpu = measure(dict(cfg, num_workers=workers, read_threads=args.read_threads), batch_size, batches)
      cpu_note = f" ({cpu:,.0f} per CPU-second)" if workers == 0 else ""
      print(f"{name}, batch {batch_size}, num_workers={workers}: {wall:,.0f} samples/s per host{cpu_note}")


if __name__ == "__main__":
  main()
