"""Encodes an image or video dataset into the SD-VAE latent cache that `source='latents'` reads.

  python -m dit_jax.data.precompute_latents --source imagefolder --data_dir /data/imagenet \
      --split train --image_size 256 --vae vae/sd-vae-ft-ema --output /data/imagenet_latents_256
  python -m dit_jax.data.precompute_latents --source videofolder --data_dir /data/ucf101 \
      --num_frames 16 --frame_stride 3 --image_size 256 --vae vae/sd-vae-ft-ema --output /data/ucf_latents

Video clips (videofolder.py) are stored per clip, their frames encoded one by one as images (as
Latte does), the flip being every frame flipped (record format: latents.py).

Per image the cache stores the VAE posterior (mean, logvar) of the ADM-center-cropped image AND of
its horizontal flip, plus the label (format: latents.py). Shards are split over processes
(shard s goes to process s % process_count; on a pod pass --distributed on every host) and each
batch over the process's local devices. Finished shards are skipped, so an interrupted run is
resumed by rerunning the same command. Unreadable images are skipped and counted.

--output may be a bucket (gs://B/DIR): ArrayRecord's writer writes local files only, so each
shard is written to a local temporary file and copied there through etils.epath before its
marker is written.
"""
import argparse
import concurrent.futures
import json
import math
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from dit_jax.data import latents, sources
from dit_jax.models import vae, vae_weights

IMAGES_PER_SHARD = 10_000
_TMP_SUFFIX = ".tmp"
_META_KEYS = ("image_size", "latent_shape", "dtype", "num_shards", "num_source_examples", "num_frames",
              "frame_stride")


def make_encoder(vae_dir: str, dtype: str):
  """Returns (fn(images NHWC in [-1, 1]) -> moments (B, 2, 2, h, w, c), local device count).

  Batches (a multiple of the local device count) are split over this process's devices.
  """
  model, params = vae_weights.load_vae(vae_dir, dtype=jnp.dtype(dtype))
  mesh = Mesh(np.array(jax.local_devices()), ("batch",))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  batch_sharding = NamedSharding(mesh, P("batch"))

  @jax.jit
  def moments_fn(params, images):
    both = jnp.concatenate([images, images[:, :, ::-1]], axis=0)  # image, then its flip
    mean, logvar = model.apply({"params": params}, both, method=vae.AutoencoderKL.encode)
    out = jnp.stack([mean, logvar], axis=1).reshape(2, images.shape[0], 2, *mean.shape[1:])
    return jnp.swapaxes(out, 0, 1)  # (B, flip, mean/logvar, h, w, c)

  def encode(images: np.ndarray) -> np.ndarray:
    return np.asarray(moments_fn(params, jax.device_put(images, batch_sharding)))

  return encode, len(jax.local_devices())


def _read_or_none(source, index: int):
  try:
    return source.read(index)
  except Exception as e:  # pylint: disable=broad-except  # bad image: skipped and counted
    tqdm.write(f"skipping unreadable example {index}: {e}")
    return None


def _chunks(source, indices, batch_size: int, pool):
  """Yields lists of decoded examples (None for unreadable), decoding one chunk ahead."""
  starts = range(0, len(indices), batch_size)
  pending = None
  for start in list(starts) + [None]:
    nxt = None if start is None else [pool.submit(_read_or_none, source, i)
                                      for i in indices[start:start + batch_size]]
    if pending is not None:
      yield [f.result() for f in pending]
    pending = nxt


def _write_shard(path, source, indices, encode, num_devices, batch_size, dtype, pool, progress):
  from array_record.python.array_record_module import ArrayRecordWriter  # local: tool-only
  local = "://" not in path
  with tempfile.TemporaryDirectory() as tmp:
    staging = path + _TMP_SUFFIX if local else os.path.join(tmp, os.path.basename(path))
    writer = ArrayRecordWriter(staging, latents.WRITER_OPTIONS)
    written = skipped = 0
    for chunk in _chunks(source, indices, batch_size, pool):
      good = [e for e in chunk if e is not None]
      skipped += len(chunk) - len(good)
      if good:
        examples = np.stack([e["x"] for e in good])
        images = examples.reshape(-1, *examples.shape[-3:])  # a video clip's frames, as images
        pad = -len(images) % num_devices
        moments = encode(np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]))
        moments = moments[:len(images)].reshape(*examples.shape[:-3], *moments.shape[1:])
        if examples.ndim == 5:  # (clip, frame, flip, mean/logvar, ..) -> (clip, flip, mean/logvar, frame, ..)
          moments = np.moveaxis(moments, 1, 3)
        moments = moments.astype(dtype)
        for e, m in zip(good, moments):
          writer.write(latents.encode_record(int(e["y"]), m))
        written += len(good)
      progress.update(len(chunk))
    writer.close()
    if local:
      os.replace(staging, path)
    else:
      sources.as_path(staging).copy(path, overwrite=True)
  sources.as_path(path + latents.DONE_SUFFIX).write_text(json.dumps(dict(images=written, skipped=skipped)))


def _check_or_write_meta(output: str, meta: dict) -> None:
  if (sources.as_path(output) / latents.META_FILE).exists():
    old = latents.read_meta(output)
    diff = {k: (old.get(k), meta.get(k)) for k in _META_KEYS if old.get(k) != meta.get(k)}
    if diff:
      raise ValueError(f"{output} holds a cache built with other settings {diff} (old, new); "
                       "use another --output or the original settings.")
  elif jax.process_index() == 0:
    latents.write_meta(output, meta)


def precompute(args) -> dict:
  """Encodes this process's unfinished shards; returns the summary of the whole cache so far."""
  data_cfg = dict(source=args.source, data_dir=args.data_dir, name=args.name, split=args.split,
                  image_size=args.image_size, num_frames=args.num_frames, frame_stride=args.frame_stride)
  source = sources.make_source(data_cfg)
  if not isinstance(source, sources.SkippingSource):
    raise ValueError(f"--source={args.source}: only image and video folder sources can be cached.")
  video = {}  # video caches record their clip settings; a record holds F frame latents
  if args.source == sources.SOURCE_VIDEOFOLDER:
    video = dict(num_frames=args.num_frames, frame_stride=args.frame_stride)
  latent_shape = list(vae.latent_shape(args.vae, args.image_size))
  latent_shape = [args.num_frames, *latent_shape] if video else latent_shape
  num_shards = args.num_shards or max(1, math.ceil(len(source) / IMAGES_PER_SHARD))
  meta = dict(image_size=args.image_size, latent_shape=latent_shape,
              dtype=args.dtype, num_shards=num_shards, num_source_examples=len(source),
              source=repr(source), vae=args.vae if "://" in args.vae else os.path.abspath(args.vae),
              **video)
  sources.as_path(args.output).mkdir(parents=True, exist_ok=True)
  _check_or_write_meta(args.output, meta)
  bounds = np.linspace(0, len(source), num_shards + 1).astype(int)
  mine = [s for s in range(num_shards) if s % jax.process_count() == jax.process_index()]
  todo = [s for s in mine
          if not sources.as_path(latents.shard_path(args.output, s, num_shards) + latents.DONE_SUFFIX).exists()]
  encode, num_devices = make_encoder(args.vae, args.vae_dtype)
  start = time.time()
  total = sum(bounds[s + 1] - bounds[s] for s in todo)
  with concurrent.futures.ThreadPoolExecutor(args.num_threads) as pool, \
      tqdm(total=total, unit="img", desc=f"process {jax.process_index()}") as progress:
    for s in todo:
      _write_shard(latents.shard_path(args.output, s, num_shards), source, range(bounds[s], bounds[s + 1]),
                   encode, num_devices, args.batch_size, np.dtype(args.dtype), pool, progress)
  summary = dict(images=0, skipped=0, shards_done=0, num_shards=num_shards,
                 shards_encoded_now=len(todo), seconds=round(time.time() - start, 1))
  for s in range(num_shards):
    marker = sources.as_path(latents.shard_path(args.output, s, num_shards) + latents.DONE_SUFFIX)
    if marker.exists():
      done = json.loads(marker.read_text())
      summary["images"] += done["images"]
      summary["skipped"] += done["skipped"]
      summary["shards_done"] += 1
  return summary


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True,
                      choices=[sources.SOURCE_IMAGEFOLDER, sources.SOURCE_TFDS, sources.SOURCE_VIDEOFOLDER])
  parser.add_argument("--data_dir", default="", help="image or video folder root, or the TFDS data_dir")
  parser.add_argument("--name", default="", help="TFDS dataset name (e.g. imagenet2012)")
  parser.add_argument("--split", default="", help="TFDS split, or a subfolder of --data_dir")
  parser.add_argument("--image_size", type=int, required=True, help="256 or 512 for DiT")
  parser.add_argument("--num_frames", type=int, default=0, help="videofolder: frames per clip")
  parser.add_argument("--frame_stride", type=int, default=1, help="videofolder: take every k-th frame")
  parser.add_argument("--vae", required=True, help="converted VAE dir (python -m dit_jax.models.vae_weights)")
  parser.add_argument("--output", required=True, help="cache directory (local or gs://)")
  parser.add_argument("--num_shards", type=int, default=0, help=f"0: one per {IMAGES_PER_SHARD} images")
  parser.add_argument("--batch_size", type=int, default=64,
                      help="images (video: clips) per encode call per process")
  parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                      help="storage dtype (float16 halves the size; float32 is exact)")
  parser.add_argument("--vae_dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--num_threads", type=int, default=os.cpu_count(), help="image decoding threads")
  parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (pods)")
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.distributed:
    jax.distributed.initialize()
  summary = precompute(args)
  print(f"latent cache {args.output}: {summary['images']} images, {summary['skipped']} skipped, "
        f"{summary['shards_done']}/{summary['num_shards']} shards done "
        f"({summary['shards_encoded_now']} encoded now in {summary['seconds']} s)")


if __name__ == "__main__":
  main()
