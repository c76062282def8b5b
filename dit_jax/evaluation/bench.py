r"""Throughput of Inception feature extraction: how long scoring 50,000 samples takes.

  python -m dit_jax.evaluation.bench --batch_per_device 64 --image_size 256 --steps 10 \
      [--precision highest|default] [--json /tmp/inception.json]

Times the path ``dit_jax.evaluate`` runs (``features.FeatureExtractor``: a uint8 batch sharded
over all devices, resize to 299, the FID Inception, features replicated back to the host and
folded into float64 statistics) on random images with random weights (the speed does not depend
on the weights). Compilation and ``--warmup`` batches are excluded. The process CPU seconds per
image are reported too: on a shared CPU they, unlike wall time, barely depend on other jobs.
``--precision default`` lets GPUs/TPUs use their fast float32 matmul modes (TF32 / bf16 passes)
instead of full float32.
"""
import time

from absl import app, flags
import jax
import numpy as np

from dit_jax import bench, paths, sharding
from dit_jax.evaluation import features, inception

PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


def run(batch_per_device: int, image_size: int, steps: int, warmup: int = 1,
        precision: str = "highest") -> dict:
  """images/s of FeatureExtractor.add on ``steps`` global batches (after compile and warm-up)."""
  mesh = sharding.create_mesh({"data": -1})
  batch = batch_per_device * mesh.size
  params = inception.init_params(jax.random.key(0))
  images = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3), np.uint8)
  extractor = features.FeatureExtractor(params, images.shape[1:], mesh=mesh, batch_size=batch,
                                        precision=PRECISIONS[precision])
  timer = bench.Timer()
  extractor.add_images(images)
  compile_s = timer.elapsed()
  for _ in range(warmup):
    extractor.add_images(images)
  times = []
  cpu_start = time.process_time()
  for _ in range(steps):
    timer = bench.Timer()
    extractor.add_images(images)
    times.append(timer.elapsed())
  cpu_s_per_image = (time.process_time() - cpu_start) / (steps * batch)
  stats = bench.summarize(times)
  return dict(mode="inception_features", images_per_s=batch / stats["mean"], batch=batch,
              process_cpu_s_per_image=cpu_s_per_image, image_size=image_size, precision=precision, devices=mesh.size,
              device_kind=jax.devices()[0].device_kind, compile_s=compile_s, step=stats,
              peak_memory_bytes=bench.peak_memory_bytes(), versions=bench.versions())


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  if f.json:
    paths.prepare_output_file(f.json, "--json")
  result = run(f.batch_per_device, f.image_size, f.steps, f.warmup, f.precision)
  print(f"Inception features: {result['images_per_s']:.1f} images/s ({result['batch']} x "
        f"{f.image_size}px per batch on {result['devices']} x {result['device_kind']}, precision "
        f"{f.precision}; 50,000 images in {50_000 / result['images_per_s'] / 60:.1f} min; "
        f"process CPU {result['process_cpu_s_per_image']:.3f} s/image)")
  bench.write_json(result, f.json)


if __name__ == "__main__":
  flags.DEFINE_integer("batch_per_device", 32, "Images per device per batch.", lower_bound=1)
  flags.DEFINE_integer("image_size", 256, "Side of the (square) input images.", lower_bound=1)
  flags.DEFINE_integer("steps", 5, "Timed batches.", lower_bound=1)
  flags.DEFINE_integer("warmup", 1, "Untimed batches after compilation.", lower_bound=0)
  flags.DEFINE_enum("precision", "highest", list(PRECISIONS), "Matmul/conv precision.")
  flags.DEFINE_string("json", None, "Also write the result as JSON here.")
  app.run(main)
