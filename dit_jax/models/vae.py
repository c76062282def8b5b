"""The Stable Diffusion VAE (diffusers' AutoencoderKL) in Flax Linen, NHWC.

Module and parameter names mirror diffusers' state-dict keys ("encoder.down_blocks.0.resnets.1
.conv1.weight" -> encoder/down_blocks_0/resnets_1/conv1/kernel) so conversion (vae_weights.py)
is mechanical. Numerics follow diffusers: GroupNorm eps 1e-6 with two-pass variance, SiLU,
downsampling by a stride-2 conv after an asymmetric (0, 1) pad of H and W, nearest-neighbour
upsampling, a single-head attention in the mid blocks, and the posterior logvar clamped to
[-30, 20]. DiT trains on `sample * 0.18215` of this VAE's posterior.
"""
import functools
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from dit_jax import sharding

CONV_IN = "conv_in"  # logical axis of a conv/linear's input channels
CONV_OUT = "conv_out"  # logical axis of its output channels
NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)
DEFAULT_SCALING_FACTOR = 0.18215
CONFIG_FILE = "config.json"
_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}

# The stabilityai/sd-vae-ft-{ema,mse} config (83,653,863 parameters).
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, norm_num_groups=32, act_fn="silu", scaling_factor=DEFAULT_SCALING_FACTOR,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


class _Layers(nn.Module):
  """Base with the dtype fields and factories for parameters with logical axis names."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def conv(self, features: int, kernel: int, name: str, stride: int = 1, pad: bool = True) -> nn.Conv:
    padding = ((kernel // 2, kernel // 2),) * 2 if pad else "VALID"
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding, name=name,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, CONV_IN, CONV_OUT)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (CONV_OUT,)))

  def dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (CONV_IN, CONV_OUT)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (CONV_OUT,)))

  def norm(self, groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups, epsilon=NORM_EPS, use_fast_variance=False, name=name, dtype=self.dtype,
        param_dtype=self.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (CONV_OUT,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (CONV_OUT,)))


class ResnetBlock(_Layers):
  """diffusers ResnetBlock2D without time embedding: norm-SiLU-conv twice plus a shortcut."""
  out_channels: int = 0
  groups: int = 32

  @nn.compact
  def __call__(self, x):
    h = self.conv(self.out_channels, 3, "conv1")(nn.silu(self.norm(self.groups, "norm1")(x)))
    h = self.conv(self.out_channels, 3, "conv2")(nn.silu(self.norm(self.groups, "norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = self.conv(self.out_channels, 1, "conv_shortcut")(x)
    return x + h


class Attention(_Layers):
  """diffusers' VAE mid-block attention: GroupNorm, one head over all H*W tokens, residual."""
  groups: int = 32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = self.norm(self.groups, "group_norm")(x).reshape(b, h * w, c)
    q, k, v = (self.dense(c, name)(tokens) for name in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(c)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = self.dense(c, "to_out_0")(jnp.einsum("bqk,bkc->bqc", probs, v))
    return x + out.reshape(b, h, w, c)


class MidBlock(_Layers):
  """ResNet, (attention), ResNet at the lowest resolution."""
  groups: int = 32
  add_attention: bool = True

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, groups=self.groups)
    x = ResnetBlock(out_channels=x.shape[-1], name="resnets_0", **kw)(x)
    if self.add_attention:
      x = Attention(name="attentions_0", **kw)(x)
    return ResnetBlock(out_channels=x.shape[-1], name="resnets_1", **kw)(x)


class Encoder(_Layers):
  """Image (B, H, W, C_in) -> moments (B, H/f, W/f, 2 * latent_channels), f = 2^(levels-1)."""
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 2
  groups: int = 32
  out_channels: int = 8
  add_attention: bool = True

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, groups=self.groups)
    x = self.conv(self.block_out_channels[0], 3, "conv_in")(x)
    for i, channels in enumerate(self.block_out_channels):
      block = f"down_blocks_{i}"
      for j in range(self.layers_per_block):
        x = ResnetBlock(out_channels=channels, name=f"{block}_resnets_{j}", **kw)(x)
      if i < len(self.block_out_channels) - 1:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # diffusers' asymmetric pad
        x = self.conv(channels, 3, f"{block}_downsamplers_0_conv", stride=2, pad=False)(x)
    x = MidBlock(add_attention=self.add_attention, name="mid_block", **kw)(x)
    x = nn.silu(self.norm(self.groups, "conv_norm_out")(x))
    return self.conv(self.out_channels, 3, "conv_out")(x)


class Decoder(_Layers):
  """Latent (B, h, w, latent_channels) -> image (B, h*f, w*f, C_out)."""
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 2
  groups: int = 32
  out_channels: int = 3
  add_attention: bool = True

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, groups=self.groups)
    channels = list(reversed(self.block_out_channels))
    x = self.conv(channels[0], 3, "conv_in")(z)
    x = MidBlock(add_attention=self.add_attention, name="mid_block", **kw)(x)
    for i, ch in enumerate(channels):
      block = f"up_blocks_{i}"
      for j in range(self.layers_per_block + 1):
        x = ResnetBlock(out_channels=ch, name=f"{block}_resnets_{j}", **kw)(x)
      if i < len(channels) - 1:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
        x = self.conv(ch, 3, f"{block}_upsamplers_0_conv")(x)
    x = nn.silu(self.norm(self.groups, "conv_norm_out")(x))
    return self.conv(self.out_channels, 3, "conv_out")(x)


class AutoencoderKL(_Layers):
  """diffusers' AutoencoderKL: `encode(x) -> (mean, logvar)`, `decode(z)`, `__call__` = both.

  Images are NHWC in [-1, 1]; latents are unscaled (multiply by `scaling_factor` for DiT).
  Outputs of encode are float32 whatever the compute dtype.
  """
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 1
  norm_num_groups: int = 32
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  scaling_factor: float = DEFAULT_SCALING_FACTOR

  @classmethod
  def from_diffusers_config(cls, config: dict, **kwargs) -> "AutoencoderKL":
    """Builds the model from a diffusers `config.json` dict; kwargs (dtype, ...) override."""
    for key, expected in _BLOCK_TYPES.items():
      bad = [t for t in config.get(key, ()) if t != expected]
      if bad:
        raise ValueError(f"VAE config {key} has {bad}; only {expected} (the SD VAE's blocks) is supported.")
    if config.get("act_fn", "silu") != "silu":
      raise ValueError(f"VAE config act_fn={config['act_fn']!r}; only 'silu' is supported.")
    names = [f.name for f in cls.__dataclass_fields__.values() if f.name not in ("parent", "name")]
    fields = {k: config[k] for k in names if k in config and config[k] is not None}
    fields["block_out_channels"] = tuple(fields.get("block_out_channels", cls.block_out_channels))
    fields.update(kwargs)
    return cls(**fields)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, groups=self.norm_num_groups,
              block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
              add_attention=self.mid_block_add_attention)
    self.encoder = Encoder(out_channels=2 * self.latent_channels, **kw)
    self.decoder = Decoder(out_channels=self.out_channels, **kw)
    if self.use_quant_conv:
      self.quant_conv = self.conv(2 * self.latent_channels, 1, "quant_conv")
    if self.use_post_quant_conv:
      self.post_quant_conv = self.conv(self.latent_channels, 1, "post_quant_conv")

  def encode(self, x):
    moments = self.encoder(x.astype(self.dtype))
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z):
    z = z.astype(self.dtype)
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)


def sample_posterior(mean, logvar, rng):
  """One posterior sample mean + exp(logvar / 2) * eps (diffusers' DiagonalGaussian.sample)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def latent_shape(vae_dir: str, image_size: int) -> tuple[int, int, int]:
  """(h, w, latent_channels) of images of `image_size` under the VAE saved in `vae_dir`."""
  path = os.path.join(vae_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no VAE config at {path}; convert the VAE first "
                            "(python -m dit_jax.models.vae_weights --help).")
  with open(path) as f:
    model = AutoencoderKL.from_diffusers_config(json.load(f))
  if image_size % model.downsample_factor:
    raise ValueError(f"image_size={image_size} is not a multiple of the VAE's downsampling "
                     f"factor {model.downsample_factor}.")
  side = image_size // model.downsample_factor
  return (side, side, model.latent_channels)


def make_encode_fn(vae_dir: str, dtype: Any = jnp.float32, latent_scale: float | None = None,
                   mesh: jax.sharding.Mesh | None = None) -> Callable:
  """Loads a converted VAE and returns jitted `fn(images, rng) -> scaled latents`.

  `images` are NHWC in [-1, 1] (or videos NFHWC, encoded frame by frame as Latte does); the
  result is a posterior sample times `latent_scale` (default:
  the VAE config's scaling_factor, 0.18215), as DiT's training script computes on the fly. With
  a `mesh` the parameters are replicated on it once and the latents come out batch-sharded over
  (data, fsdp) like the training batch; the parameters are an argument of the jitted function,
  never constants baked into the program.
  """
  from dit_jax.models import vae_weights  # local: vae_weights imports this module
  model, params = vae_weights.load_vae(vae_dir, dtype=dtype)
  scale = model.scaling_factor if latent_scale is None else latent_scale
  out_sharding = None
  if mesh is not None:
    params = jax.device_put(params, sharding.replicated(mesh))
    out_sharding = sharding.batch_sharding(mesh)

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def encode(vae_params, images, rng):
    frames = images.reshape((-1,) + images.shape[-3:])
    mean, logvar = model.apply({"params": vae_params}, frames, method=AutoencoderKL.encode)
    latents = sample_posterior(mean, logvar, rng) * scale
    return latents.reshape(images.shape[:-3] + latents.shape[-3:])

  return functools.partial(encode, params)
