"""The FID Inception-v3 (TF graph of 2015-12-05, as ADM's evaluator and pytorch-fid use it) in Flax.

Architecture as pytorch-fid 0.3.0 builds it (torchvision's Inception3 with 1008 classes, no
auxiliary head, and the FID blocks): average pools that leave the zero padding out of the mean,
and a max pool in the pool branch of the last block (Mixed_7c), a quirk of the TF graph. Arrays
are NHWC. Every convolution is BasicConv2d: conv without bias, BatchNorm (eps 1e-3, inference
statistics) and ReLU, so the features of an image never depend on the rest of its batch.

Parameters are Flax variables ``{"params": ..., "batch_stats": ...}`` whose module names are the
torchvision ones (``Mixed_6d/branch1x1/conv/kernel``, ``.../bn/mean``); ``params_from_pytorch_fid``
converts pytorch-fid's weight file ``pt_inception-2015-12-05-6726825d.pth`` into them and
``load_params`` finds, downloads (hash-checked, cached) and converts that file.

Features (``extract_features``): ``pool`` the 2048-d pool3 vector (FID, precision/recall),
``logits`` pool3 times the 1008-way classifier's weight without its bias (the Inception score,
as ADM's evaluator and torch-fidelity compute it), ``spatial`` the first 7 channels of Mixed_6d's
1x1 branch, 17 x 17 x 7 flattened in H, W, C order (sFID; ADM's ``mixed_6/conv``).
"""
import functools
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from dit_jax.downloads import download

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048
SPATIAL_CHANNELS = 7  # of Mixed_6d's 1x1 branch: 17 * 17 * 7 = 2023 sFID features
BN_EPSILON = 1e-3
# Flax (collection, leaf name) -> the torch state-dict suffix of the same tensor.
TORCH_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# In the weight file but in no output: the classifier bias (the logits leave it out).
UNUSED_KEYS = {"fc.bias": (NUM_CLASSES,)}

Precision = Any  # what flax's Conv/Dense take: None, a jax.lax.Precision or its name


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm with running statistics (eps 1e-3) -> ReLU. ``padding`` is
  torch's symmetric (height, width) padding."""
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3 stride-1 average of the TF graph: zero padding is not counted in the mean."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int = 1):
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  """Mixed_5b/c/d (35 x 35): 1x1, 5x5, double 3x3 and average-pool branches."""
  pool_features: int
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35 x 35 -> 17 x 17 (strided 3x3, strided double 3x3, max pool)."""
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (17 x 17): factorized 7x7 branches of ``channels_7x7`` inner channels."""
  channels_7x7: int
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17 x 17 -> 8 x 8."""
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (``pool="avg"``) and Mixed_7c (``pool="max"``, the FID graph's quirk), 8 x 8."""
  pool: str
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """(N, 299, 299, 3) float32 in [-1, 1] -> {"pool", "logits", "spatial"} (module docstring).

  ``precision`` goes to every conv and the classifier: the default None is the backend's
  float32 default (exact on CPU, TF32 on recent GPUs, one bf16 pass on TPU);
  ``extract_features`` asks for HIGHEST, full float32 everywhere.
  """
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    p = self.precision
    conv = functools.partial(BasicConv2d, precision=p)
    x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, stride=2)
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, stride=2)
    x = InceptionA(32, p, name="Mixed_5b")(x)
    x = InceptionA(64, p, name="Mixed_5c")(x)
    x = InceptionA(64, p, name="Mixed_5d")(x)
    x = InceptionB(p, name="Mixed_6a")(x)
    x = InceptionC(128, p, name="Mixed_6b")(x)
    x = InceptionC(160, p, name="Mixed_6c")(x)
    x = InceptionC(160, p, name="Mixed_6d")(x)
    # Mixed_6d's 1x1 branch is the first part of its concatenated output.
    spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionC(192, p, name="Mixed_6e")(x)
    x = InceptionD(p, name="Mixed_7a")(x)
    x = InceptionE("avg", p, name="Mixed_7b")(x)
    x = InceptionE("max", p, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, use_bias=False, precision=p, name="fc")(pool)
    return {"pool": pool, "logits": logits, "spatial": spatial}


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (N, H, W, 3) -> float32 (N, 299, 299, 3) in [-1, 1], as pytorch-fid: x / 255,
  bilinear resize with half-pixel centres and no antialiasing (torch's
  ``F.interpolate(mode="bilinear", align_corners=False)``), then 2x - 1."""
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
    raise ValueError(f"Inception features need uint8 RGB images (N, H, W, 3); got "
                     f"{images.dtype} {tuple(images.shape)}.")
  x = images.astype(jnp.float32) / 255.0
  x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear",
                       antialias=False)
  return 2.0 * x - 1.0


@functools.partial(jax.jit, static_argnames="precision")
def extract_features(params, images: jax.Array, *,
                     precision: Precision = jax.lax.Precision.HIGHEST) -> dict[str, jax.Array]:
  """uint8 images (N, H, W, 3), any size -> float32 {"pool": (N, 2048), "logits": (N, 1008),
  "spatial": (N, 2023)}. Jitted; under an outer jit a batch-sharded ``images`` keeps its
  sharding (every op is per image). ``precision`` defaults to full float32 on every backend;
  "default" trades accuracy for speed on GPUs/TPUs."""
  return FIDInceptionV3(precision=precision).apply(params, preprocess(images))


def _abstract_variables():
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), x)


@jax.jit
def init_params(key: jax.Array):
  """Random variables with the structure of the converted weights (for tests and benchmarks):
  He-normal kernels, which keep activations at scale through the ReLU layers, and identity
  batch norms. All kernels come from one normal draw: ~100 separate draws (``module.init``)
  take XLA half a minute to compile on a CPU."""
  flat = traverse_util.flatten_dict(_abstract_variables())
  kernels = [path for path in flat if path[-1] == "kernel"]
  noise = jax.random.normal(key, (sum(flat[path].size for path in kernels),), jnp.float32)
  offsets = np.cumsum([0] + [flat[path].size for path in kernels])
  ones = ("scale", "var")
  variables = {path: jnp.full(leaf.shape, 1.0 if path[-1] in ones else 0.0, jnp.float32)
               for path, leaf in flat.items() if path[-1] != "kernel"}
  for path, start, stop in zip(kernels, offsets[:-1], offsets[1:]):
    shape = flat[path].shape
    fan_in = flat[path].size // shape[-1]
    variables[path] = noise[start:stop].reshape(shape) * np.sqrt(2.0 / fan_in)
  return traverse_util.unflatten_dict(variables)


def _torch_key(path: tuple[str, ...]) -> str:
  collection, *modules, leaf = path
  return ".".join([*modules, TORCH_LEAF_NAMES[(collection, leaf)]])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax conv kernel (H, W, in, out) -> torch (out, in, H, W); Dense (in, out) -> (out, in)."""
  if len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(reversed(shape))


def _to_flax(value: np.ndarray) -> np.ndarray:
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def params_from_pytorch_fid(state_dict: Mapping[str, Any]):
  """pytorch-fid's Inception state dict (name -> torch tensor or numpy array) -> Flax variables.

  Keys are torchvision's (``Conv2d_1a_3x3.conv.weight``, ``Mixed_7c.branch_pool.bn.running_var``,
  ``fc.weight``, ...); ``num_batches_tracked`` entries are ignored and ``fc.bias`` is checked but
  dropped (no output uses it). Raises one ValueError naming every missing, unknown and mis-shaped
  key.
  """
  flat = traverse_util.flatten_dict(_abstract_variables())
  expected = {_torch_key(path): (path, _torch_shape(leaf.shape)) for path, leaf in flat.items()}
  shapes = {key: shape for key, (_, shape) in expected.items()} | UNUSED_KEYS
  given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  problems = [f"missing {k}" for k in sorted(shapes.keys() - given.keys())]
  problems += [f"unknown {k}" for k in sorted(given.keys() - shapes.keys())]
  arrays = {k: np.asarray(v, np.float32) for k, v in given.items() if k in shapes}
  problems += [f"mis-shaped {k}: {arrays[k].shape}, expected {shapes[k]}"
               for k in sorted(arrays) if arrays[k].shape != shapes[k]]
  if problems:
    raise ValueError("Not a pytorch-fid FID Inception state dict (pt_inception-2015-12-05): "
                     + "; ".join(problems) + ".")
  converted = {path: jnp.asarray(_to_flax(arrays[k])) for k, (path, _) in expected.items()}
  return traverse_util.unflatten_dict(converted)


def _read_state_dict(path: pathlib.Path) -> Mapping[str, Any]:
  try:
    import torch  # local: only reading .pth files needs it
  except ImportError as err:
    raise ImportError("Reading pytorch-fid's .pth weights needs PyTorch: pip install torch "
                      "(the CPU build is enough).") from err
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:  # torch reports truncation / foreign files with assorted types
    # torch's own text is chained, not repeated: for foreign files it suggests weights_only=False.
    raise ValueError(f"{path} could not be read as a PyTorch weight file ({type(err).__name__}): "
                     "it is truncated or not a .pth. Delete it and download it again "
                     f"(load_params() with no argument fetches {FID_WEIGHTS_URL}).") from err
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict (name -> tensor).")
  return state


def load_params(path_or_url: str | os.PathLike | None = None, cache_dir: str | None = None):
  """Flax variables of the FID Inception from pytorch-fid's weight file.

  ``path_or_url``: a local .pth; a URL (downloaded once into ``cache_dir``, default $DIT_JAX_CACHE
  or ~/.cache/dit_jax, hash-checked, then reused); None = pytorch-fid's released
  ``FID_WEIGHTS_URL``. Needs torch to read the file.
  """
  source = FID_WEIGHTS_URL if path_or_url is None else os.fspath(path_or_url)
  if "://" in source:
    path = download(source, cache_dir,
                    manual_hint="Download it by other means and pass its path to load_params.")
  else:
    path = pathlib.Path(source).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"Inception weight file {path} not found; pass pytorch-fid's "
                              f"pt_inception-2015-12-05-6726825d.pth, a URL, or nothing to "
                              f"download {FID_WEIGHTS_URL}.")
  return params_from_pytorch_fid(_read_state_dict(path))
