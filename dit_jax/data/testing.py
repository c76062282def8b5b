"""Tiny fixtures for tests: an image folder, a random SD-VAE-shaped VAE and a latent cache.

Other areas' tests (e.g. a few training steps from cached latents) build their inputs here
instead of duplicating the setup. `local_bucket` serves gs:// paths from a local directory.
"""
import contextlib
import importlib
import os

import jax
import jax.numpy as jnp
import fsspec
import numpy as np
from etils import epath
from flax import linen as nn
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from dit_jax.data import precompute_latents
from dit_jax.models import vae, vae_weights

TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
    norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.18215)


def make_image_folder(root: str, num_classes: int = 2, per_class: int = 3, corrupt: int = 0, seed: int = 0) -> str:
  """Writes random RGB JPEG/PNG images of assorted sizes into root/class_k/; returns root."""
  rng = np.random.RandomState(seed)
  for k in range(num_classes):
    os.makedirs(os.path.join(root, f"class_{k}"), exist_ok=True)
    for i in range(per_class):
      h, w = rng.randint(12, 48, size=2)
      ext = "png" if (i + k) % 2 else "jpg"
      Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(os.path.join(root, f"class_{k}", f"{i}.{ext}"))
  for i in range(corrupt):
    with open(os.path.join(root, "class_0", f"corrupt_{i}.jpg"), "wb") as f:
      f.write(b"\xff\xd8 truncated")
  return root


def make_vae_dir(path: str, seed: int = 0, logvar_bias: float = 0.0) -> str:
  """Saves a tiny random VAE (downsampling 2) as `vae_weights.save_vae` does; returns path.

  `logvar_bias` is added to quant_conv's logvar outputs (e.g. -100 for a near-deterministic
  posterior after the [-30, 20] clamp).
  """
  model = vae.AutoencoderKL.from_diffusers_config(TINY_VAE_CONFIG)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))))
  rng = np.random.RandomState(seed)  # numpy init: compiling the random init takes ~20 s on CPU

  def init(path, leaf):
    if path[-1].key == "kernel":
      return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    base = 1.0 if path[-1].key == "scale" else 0.0
    return (base + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(init, abstract["params"])
  params["quant_conv"]["bias"][TINY_VAE_CONFIG["latent_channels"]:] += logvar_bias
  vae_weights.save_vae(path, TINY_VAE_CONFIG, params)
  return path


def make_latent_cache(root: str, image_size: int = 16, num_images: int = 8, num_shards: int = 2) -> dict:
  """Builds folder -> tiny VAE -> cache under `root`; returns the `config.data` dict to train on."""
  folder = make_image_folder(os.path.join(root, "images"), per_class=num_images // 2)
  vae_dir = make_vae_dir(os.path.join(root, "vae"))
  cache = os.path.join(root, "latents")
  precompute_latents.main(["--source", "imagefolder", "--data_dir", folder, "--image_size", str(image_size),
                           "--vae", vae_dir, "--output", cache, "--num_shards", str(num_shards),
                           "--batch_size", "4", "--num_threads", "2"])
  return dict(source="latents", data_dir=cache, image_size=image_size, flip=True, latent_scale=0.18215)


class _LocalBucketFileSystem(DirFileSystem):
  """fsspec filesystem for `PROTOCOL://BUCKET/PATH` = `root/BUCKET/PATH` (root: a subclass's)."""
  root = ""

  def __init__(self, *args, **kwargs):  # epath passes gcsfs's options (finalize_on_close)
    del args, kwargs
    super().__init__(path=self.root, fs=LocalFileSystem())


@contextlib.contextmanager
def local_bucket(root: str, protocols: tuple[str, ...] = ("gs",)):
  """Serves `gs://BUCKET/PATH` (and the other `protocols`) from `root/BUCKET/PATH`.

  etils.epath reaches gs:// through tf.io.gfile when TensorFlow is installed and through
  fsspec otherwise (EPATH_USE_TF=false); here it is switched to fsspec with this local
  filesystem registered for the protocols, so the data code makes the same epath calls as on a
  real bucket without any network. ArrayRecord's C++ reader does not go through epath: it
  cannot be served this way (on gs:// it would call Google Cloud Storage).
  """
  from etils.epath import backend, gpath  # pylint: disable=g-import-not-at-top
  registry = importlib.import_module("fsspec.registry")._registry  # the mutable registry
  fs_cls = type("LocalBucketFileSystem", (_LocalBucketFileSystem,),
                dict(root=root, protocol=tuple(protocols) + (("gcs",) if "gs" in protocols else ())))
  names = fs_cls.protocol
  saved_env, saved_fs = os.environ.get("EPATH_USE_TF"), {n: registry.get(n) for n in names}

  def reset_caches():  # epath caches its TensorFlow check and its filesystems
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access

  os.environ["EPATH_USE_TF"] = "false"
  for name in names:
    fsspec.register_implementation(name, fs_cls, clobber=True)
  reset_caches()
  try:
    yield epath.Path(root)
  finally:
    if saved_env is None:
      os.environ.pop("EPATH_USE_TF", None)
    else:
      os.environ["EPATH_USE_TF"] = saved_env
    for name, cls in saved_fs.items():
      if cls is None:
        registry.pop(name, None)
      else:
        registry[name] = cls
    reset_caches()
