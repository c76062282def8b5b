r"""Scores samples as ADM's evaluator (the one the DiT paper used): FID, sFID, IS, precision, recall.

  python -m dit_jax.evaluate --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz \
      [--inception_weights pt_inception-2015-12-05-6726825d.pth] [--output metrics.json]

  # a reference for a dataset the project reads (statistics + pool features in ADM's keys):
  python -m dit_jax.evaluate --make_reference digits_ref.npz --data digits
  python -m dit_jax.evaluate --make_reference val_ref.npz --data imagefolder:/data/val \
      --image_size 256

``--samples`` is an npz with ``arr_0`` uint8 (N, H, W, 3 or 1) as ``dit_jax.sample`` writes it;
``--reference`` is ADM's reference batch or one made here (see dit_jax/evaluation/reference.py).
Without ``--inception_weights`` pytorch-fid's released weights are downloaded once into the cache
(``$DIT_JAX_CACHE``, default ~/.cache/dit_jax) and their hash is checked. Reading the .pth needs
torch (the CPU build is enough). Features are extracted jitted and batch-sharded over all devices
of all processes; each process reads only its rows of the npz. Process 0 prints the metrics and
writes them (with the sample count, the devices and the versions) to ``--output``.
"""
import importlib.metadata
import json
import sys
import time

import jax
from absl import app, flags, logging

from dit_jax import distributed, paths, sharding
from dit_jax.evaluation import features as features_lib
from dit_jax.evaluation import inception
from dit_jax.evaluation import npz_images
from dit_jax.evaluation import reference as reference_lib
from dit_jax.evaluation import scores

VERSIONED_PACKAGES = ("dit_jax", "jax", "jaxlib", "flax", "numpy", "scipy")
DATA_KINDS = ("digits", "imagefolder", "tfds", "npz")


def versions() -> dict:
  out = {}
  for name in VERSIONED_PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def evaluate_files(samples: str, reference: str, *, inception_weights: str | None = None,
                   output: str | None = None, batch_size: int | None = None,
                   num_samples: int | None = None, mesh=None, progress: bool = False) -> dict:
  """What ``python -m dit_jax.evaluate --samples ... --reference ...`` does; returns the metrics.

  Inputs are checked (and the output directory) before any weights are loaded or compiled.
  """
  if output:
    paths.prepare_output_file(output, "--output")
  images = npz_images.NpzImages(samples)
  features_lib.check_images(images.shape, images.dtype, samples)
  if num_samples:
    if num_samples > len(images):
      raise ValueError(f"--num_samples={num_samples} but {samples} holds {len(images)} images.")
    images.shape = (num_samples, *images.shape[1:])
  reference_lib.read_reference_file(reference)
  params = inception.load_params(inception_weights)
  mesh = mesh or sharding.create_mesh({"data": -1})
  ref = reference_lib.load_reference(reference, params, mesh=mesh, batch_size=batch_size,
                                     progress=progress)
  start = time.perf_counter()
  feats = features_lib.extract_from(images, params, mesh=mesh, batch_size=batch_size,
                                    progress="sample features" if progress else False)
  seconds = time.perf_counter() - start
  result = scores.score(feats, ref)
  result.update(samples=samples, reference=reference,
                inception_weights=inception_weights or inception.FID_WEIGHTS_URL,
                feature_seconds=seconds, devices=mesh.size,
                device_kind=mesh.devices.flat[0].device_kind, versions=versions())
  if jax.process_index() == 0:
    print(json.dumps(result, indent=1))
    if output:
      with open(output, "w") as f:
        json.dump(result, f, indent=1)
  return result


def data_images(spec: str, *, data_dir: str = "", image_size: int = 0, num_images: int = 0):
  """``--data`` for --make_reference: digits | imagefolder:DIR | tfds:NAME[:SPLIT] | npz:FILE."""
  kind, _, rest = spec.partition(":")
  if kind not in DATA_KINDS or (kind != "digits" and not rest):
    raise ValueError(f"--data={spec!r}: use one of digits, imagefolder:DIR, tfds:NAME[:SPLIT], "
                     "npz:FILE.npz.")
  if kind == "npz":
    images = npz_images.NpzImages(rest)
    if num_images:
      images.shape = (min(num_images, len(images)), *images.shape[1:])
    return images
  data_cfg = dict(source=kind, image_size=image_size or (8 if kind == "digits" else 256),
                  data_dir=data_dir, name="", split="train")
  if kind == "imagefolder":
    data_cfg["data_dir"] = rest
    data_cfg["split"] = ""
  elif kind == "tfds":
    name, _, split = rest.partition(":")
    data_cfg.update(name=name, split=split or "train")
  return reference_lib.SourceImages(data_cfg, num_images or None)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program (no clash with other entry points' flags)."""
  flags.DEFINE_string("samples", None, "npz of samples (arr_0: uint8 N x H x W x C).")
  flags.DEFINE_string("reference", None, "Reference npz (ADM's batch or --make_reference's).")
  flags.DEFINE_string("inception_weights", None, "pytorch-fid's .pth (path or URL); default: "
                      "download the released file into the cache.")
  flags.DEFINE_string("output", None, "Write the metrics as JSON here.")
  flags.DEFINE_integer("batch_size", None, "Global batch (a multiple of the device count).")
  flags.DEFINE_integer("num_samples", None, "Score only the first N samples (default all).")
  flags.DEFINE_string("make_reference", None, "Compute a reference npz from --data instead.")
  flags.DEFINE_string("data", None, "With --make_reference: digits | imagefolder:DIR | "
                      "tfds:NAME[:SPLIT] | npz:FILE.npz.")
  flags.DEFINE_string("data_dir", "", "TFDS data_dir for --data tfds:NAME.")
  flags.DEFINE_integer("image_size", 0, "Center-crop size for imagefolder/tfds (default 256).")
  flags.DEFINE_integer("num_images", 0, "With --make_reference: the first N images (0: all).")
  distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = FLAGS
  distributed.initialize_from_flags()
  try:
    if f.make_reference:
      if not f.data:
        raise app.UsageError("--make_reference needs --data (digits | imagefolder:DIR | ...).")
      paths.prepare_output_file(f.make_reference, "--make_reference")
      images = data_images(f.data, data_dir=f.data_dir, image_size=f.image_size,
                           num_images=f.num_images)
      ref = reference_lib.make_reference(images, inception.load_params(f.inception_weights),
                                         f.make_reference, batch_size=f.batch_size, progress=True)
      logging.info("wrote the reference of %d images to %s", ref.num_images, f.make_reference)
      return
    if not (f.samples and f.reference):
      raise app.UsageError("pass --samples S.npz and --reference R.npz (or --make_reference).")
    evaluate_files(f.samples, f.reference, inception_weights=f.inception_weights,
                   output=f.output, batch_size=f.batch_size, num_samples=f.num_samples,
                   progress=True)
  except (ValueError, OSError, ImportError) as e:  # bad inputs: one line naming the problem
    sys.exit(f"dit_jax.evaluate: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
