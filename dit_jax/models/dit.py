"""Diffusion Transformer (Peebles & Xie, 2023) as a Flax Linen module, NHWC (videos NTHWC).

``DiT`` keeps the official constructor's keyword names and adds the four conditioning designs
of the paper (``block_type``), dtype control, per-block rematerialization, ``nn.scan`` over
blocks and a selectable attention kernel. The fixed 2-D sin-cos position table is a constant
computed from the config, not a parameter (the official code stores it as a frozen parameter;
the converter checks it and drops it).

Videos (``num_frames`` > 0) are the same model over spacetime patches (the Sora / Latte recipe):
tubelets of ``temporal_patch_size`` x ``patch_size`` x ``patch_size``, a spacetime sin-cos table,
and either full attention over all tokens (``attention_layout="joint"``) or Latte's interleaved
spatial and temporal blocks (``"factorized"``). An image model is the video model's F = 1,
pt = 1 case with the same parameters and outputs.
"""
import dataclasses
import functools
from typing import Any, Mapping

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from dit_jax.models import layers
from dit_jax.models.layers import EMBED, MODULATION, PATCH, TOKENS, Dense, layer_norm, modulate

BLOCK_TYPES = ("adaln_zero", "adaln", "cross_attention", "in_context")
# "joint": every block attends over all tokens; "factorized": blocks alternate attention within
# each frame ("spatial") and across frames at each patch position ("temporal"), Latte's variant 1.
ATTENTION_LAYOUTS = ("joint", "factorized")
ADAPTIVE_BLOCKS = ("adaln_zero", "adaln")
# Logical name of the leading layer axis of scanned parameters (no rule: replicated).
LAYERS = "layers"
# Remat policies by name; "none" disables rematerialization, "full" saves nothing.
REMAT_POLICIES = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}
VARIANTS = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
PATCH_SIZES = (2, 4, 8)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

Dtype = Any


def variant_kwargs(name: str) -> dict:
  """Constructor kwargs of a paper variant: "XL/2" -> dict(depth=28, hidden_size=1152, ...)."""
  size, _, patch = str(name).partition("/")
  if size not in VARIANTS or not patch.isdigit() or int(patch) not in PATCH_SIZES:
    valid = ", ".join(f"{s}/{p}" for s in VARIANTS for p in PATCH_SIZES)
    raise ValueError(f"Unknown DiT variant {name!r}; use one of {valid}.")
  return dict(VARIANTS[size], patch_size=int(patch))


class DiTBlock(nn.Module):
  """One transformer block of the chosen ``block_type`` (see docs/model.md).

  ``cond`` is the conditioning vector c = t_emb + y_emb (B, D) for the adaLN designs, the
  context [t_emb, y_emb] (B, 2, D) for cross-attention, and unused for in-context. With
  ``scanned`` the block returns (x, None), the carry/output pair ``nn.scan`` expects.
  ``attention_axis`` is "joint" (all tokens), "spatial" (tokens of the same frame) or
  "temporal" (tokens of the same patch position in the ``frames`` frames); only self-attention
  is grouped, everything else acts per token.
  """
  num_heads: int
  mlp_ratio: float
  block_type: str
  attention_impl: str
  dtype: Dtype
  param_dtype: Dtype
  scanned: bool = False
  attention_axis: str = "joint"
  frames: int = 1

  def _self_attention(self, attn: nn.Module, x: jax.Array) -> jax.Array:
    if self.attention_axis == "joint":
      return attn(x)
    groups = "(b t) s d" if self.attention_axis == "spatial" else "(b s) t d"
    grouped = einops.rearrange(x, f"b (t s) d -> {groups}", t=self.frames)
    return einops.rearrange(attn(grouped), f"{groups} -> b (t s) d", b=x.shape[0])

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array | None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    x = nn.with_logical_constraint(x, TOKENS)
    attn = functools.partial(
        self._self_attention, layers.Attention(self.num_heads, self.attention_impl, name="attn", **kw))
    mlp = layers.Mlp(self.mlp_ratio, name="mlp", **kw)
    if self.block_type in ADAPTIVE_BLOCKS:
      zero = self.block_type == "adaln_zero"
      chunks = 6 if zero else 4
      mod = Dense((chunks * d,), (EMBED,), (MODULATION,), name="adaLN_modulation",
                  kernel_init=nn.initializers.zeros_init() if zero else None, **kw)(nn.silu(cond))
      mod = jnp.split(mod, chunks, axis=-1)
      if zero:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        gate_msa, gate_mlp = gate_msa[:, None], gate_mlp[:, None]
      else:
        shift_msa, scale_msa, shift_mlp, scale_mlp = mod
        gate_msa = gate_mlp = 1.0
      norm = layer_norm(**kw)
      x = x + gate_msa * attn(modulate(norm(x), shift_msa, scale_msa))
      x = x + gate_mlp * mlp(modulate(norm(x), shift_mlp, scale_mlp))
    else:
      x = x + attn(layer_norm(True, name="norm1", **kw)(x))
      if self.block_type == "cross_attention":
        cross = layers.CrossAttention(self.num_heads, self.attention_impl, name="cross_attn", **kw)
        x = x + cross(layer_norm(True, name="norm_cross", **kw)(x), cond)
      x = x + mlp(layer_norm(True, name="norm2", **kw)(x))
    x = nn.with_logical_constraint(x, TOKENS)
    return (x, None) if self.scanned else x


class FactorizedBlockPair(DiTBlock):
  """A spatial block followed by a temporal block (Latte's interleaved design): the unit that
  ``nn.scan`` and rematerialization see when ``attention_layout="factorized"``."""

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array | None):
    kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, block_type=self.block_type,
              attention_impl=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype,
              frames=self.frames)
    x = DiTBlock(name="spatial", attention_axis="spatial", **kw)(x, cond)
    x = DiTBlock(name="temporal", attention_axis="temporal", **kw)(x, cond)
    return (x, None) if self.scanned else x


class FinalLayer(nn.Module):
  """Norm (adaptive [shift, scale] for the adaLN designs, else affine LN) and Linear
  D -> pt*p*p*C (pt = temporal_patch_size, 1 for images)."""
  patch_size: int
  out_channels: int
  block_type: str
  dtype: Dtype
  param_dtype: Dtype
  temporal_patch_size: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    zero = nn.initializers.zeros_init() if self.block_type == "adaln_zero" else None
    if self.block_type in ADAPTIVE_BLOCKS:
      mod = Dense((2 * x.shape[-1],), (EMBED,), (MODULATION,), name="adaLN_modulation",
                  kernel_init=zero, **kw)(nn.silu(c))
      shift, scale = jnp.split(mod, 2, axis=-1)
      x = modulate(layer_norm(**kw)(x), shift, scale)
    else:
      x = layer_norm(True, name="norm_final", **kw)(x)
    features = self.temporal_patch_size * self.patch_size ** 2 * self.out_channels
    return Dense((features,), (EMBED,), (PATCH,), name="linear", kernel_init=zero, **kw)(x)


def unpatchify(x: jax.Array, patch_size: int, channels: int, frames: int = 0,
               temporal_patch_size: int = 1) -> jax.Array:
  """(B, T, p*p*C) tokens in row-major grid order, features laid out (p_row, p_col, C) ->
  (B, H, W, C) images (a square grid of T tokens). With ``frames`` > 0: frame-major tokens of
  tubelets, features (pt, p_row, p_col, C) -> (B, F, H, W, C) videos."""
  pt = temporal_patch_size
  gt = max(frames, 1) // pt
  g = int(round((x.shape[1] // gt) ** 0.5))
  out = einops.rearrange(x, "b (gt gh gw) (pt p q c) -> b (gt pt) (gh p) (gw q) c", gt=gt, gh=g,
                         gw=g, pt=pt, p=patch_size, q=patch_size, c=channels)
  return out if frames else out[:, 0]


class DiT(nn.Module):
  """Diffusion Transformer on NHWC inputs; official constructor keyword names and defaults.

  Extra options: ``block_type`` (one of BLOCK_TYPES), ``dtype`` (compute) / ``param_dtype``,
  ``remat_policy`` ("none" or a REMAT_POLICIES key, applied to each block), ``scan_blocks``
  (``nn.scan`` over the blocks: parameters get a leading depth axis under "blocks"), and
  ``attention_impl`` ("auto": cuDNN on NVIDIA GPUs in bf16/fp16, Pallas flash attention on TPU,
  XLA elsewhere; or "xla", "cudnn", "pallas" explicitly). The output is float32 (B, H, W, C_out), C_out = 2C
  with ``learn_sigma`` ([eps, v]), whatever ``dtype`` is.

  Video: ``num_frames`` > 0 makes the input (B, F, H, W, C) with F = num_frames (0: images),
  patched into tubelets of ``temporal_patch_size`` frames; ``attention_layout`` is "joint" or
  "factorized" (then ``depth`` counts spatial and temporal blocks together and must be even).
  """
  input_size: int = 32
  patch_size: int = 2
  in_channels: int = 4
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  num_classes: int = 1000
  learn_sigma: bool = True
  block_type: str = "adaln_zero"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_blocks: bool = False
  attention_impl: str = "auto"
  num_frames: int = 0
  temporal_patch_size: int = 1
  attention_layout: str = "joint"

  @property
  def out_channels(self) -> int:
    return self.in_channels * 2 if self.learn_sigma else self.in_channels

  @property
  def temporal_tokens(self) -> int:
    """Tubelets along time (1 for images)."""
    return max(self.num_frames, 1) // self.temporal_patch_size

  @property
  def num_tokens(self) -> int:
    return self.temporal_tokens * (self.input_size // self.patch_size) ** 2

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one input: (H, W, C), or (F, H, W, C) for a video model."""
    frames = (self.num_frames,) if self.num_frames else ()
    return frames + (self.input_size, self.input_size, self.in_channels)

  def _check(self, x: jax.Array):
    problems = []
    if self.block_type not in BLOCK_TYPES:
      problems.append(f"block_type={self.block_type!r} must be one of {BLOCK_TYPES}")
    if self.input_size % self.patch_size:
      problems.append(f"input_size={self.input_size} must be a multiple of patch_size={self.patch_size}")
    if self.hidden_size % self.num_heads or self.hidden_size % 4:
      problems.append(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads} and by 4")
    if self.remat_policy != "none" and self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy={self.remat_policy!r} must be 'none' or one of {tuple(REMAT_POLICIES)}")
    if self.attention_impl not in layers.ATTENTION_IMPLS:
      problems.append(f"attention_impl={self.attention_impl!r} must be one of {layers.ATTENTION_IMPLS}")
    problems += video_problems(self)
    expected = self.input_shape
    if tuple(x.shape[1:]) != expected:
      problems.append(f"input of shape {tuple(x.shape)} does not match (B, {expected}) of the config")
    if problems:
      raise ValueError("DiT config: " + "; ".join(problems) + ".")

  def _blocks(self, h: jax.Array, cond: jax.Array | None) -> jax.Array:
    factorized = self.attention_layout == "factorized"
    block, count = (FactorizedBlockPair, self.depth // 2) if factorized else (DiTBlock, self.depth)
    if self.remat_policy != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_blocks)
    kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, block_type=self.block_type,
              attention_impl=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype,
              frames=self.temporal_tokens)
    if self.scan_blocks:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,), length=count,
                      metadata_params={nn.PARTITION_NAME: LAYERS})
      h, _ = stack(name="blocks", scanned=True, **kw)(h, cond)
      return h
    for i in range(count):
      h = block(name=f"blocks_{i}", **kw)(h, cond)
    return h

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    """Model output (B, H, W, C_out) for images x (B, H, W, C), timesteps t (B,), labels y (B,);
    (B, F, H, W, C_out) for videos x (B, F, H, W, C).

    ``train=True`` enables label dropout (needs the "dropout" RNG stream).
    """
    self._check(x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    grid = self.input_size // self.patch_size
    h = layers.PatchEmbed(self.patch_size, self.hidden_size, self.temporal_patch_size,
                          name="x_embedder", **kw)(x)
    # A constant, not a parameter; the 2-D table for images (one temporal token).
    pos = layers.sincos_pos_embed_3d(self.hidden_size, self.temporal_tokens, grid)
    h = h + jnp.asarray(pos, self.dtype)[None]
    t_emb = layers.TimestepEmbedder(self.hidden_size, name="t_embedder", **kw)(t)
    y_emb = layers.LabelEmbedder(self.num_classes, self.hidden_size, self.class_dropout_prob,
                                 name="y_embedder", **kw)(y, train)
    c = t_emb + y_emb
    cond = None
    if self.block_type in ADAPTIVE_BLOCKS:
      cond = c
    elif self.block_type == "cross_attention":
      cond = jnp.stack([t_emb, y_emb], axis=1)
    else:  # in_context: two extra tokens, removed after the last block
      h = jnp.concatenate([h, t_emb[:, None], y_emb[:, None]], axis=1)
    h = self._blocks(nn.with_logical_constraint(h, TOKENS), cond)
    h = h[:, :self.num_tokens]
    h = FinalLayer(self.patch_size, self.out_channels, self.block_type, name="final_layer",
                   temporal_patch_size=self.temporal_patch_size, **kw)(h, c)
    out = unpatchify(h, self.patch_size, self.out_channels, self.num_frames, self.temporal_patch_size)
    return out.astype(jnp.float32)

  def forward_with_cfg(self, x: jax.Array, t: jax.Array, y: jax.Array, cfg_scale,
                       guidance_channels: int | None = 3) -> jax.Array:
    """Classifier-free guidance with the official batch convention.

    The batch is [conditional half; unconditional half] (y of the second half = num_classes).
    Only the first half of x is used (duplicated). The guided prediction
    uncond + cfg_scale * (cond - uncond) replaces output channels [0, guidance_channels) in both
    halves (3 by default, as the released code hard-codes; None guides every channel); the
    other channels (e.g. the learned variance) pass through unguided.
    """
    half = x[: x.shape[0] // 2]
    out = self(jnp.concatenate([half, half], axis=0), t, y)
    g = out.shape[-1] if guidance_channels is None else guidance_channels
    eps, rest = out[..., :g], out[..., g:]
    cond_eps, uncond_eps = jnp.split(eps, 2, axis=0)
    guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return jnp.concatenate([jnp.concatenate([guided, guided], axis=0), rest], axis=-1)


def video_problems(model) -> list[str]:
  """What is wrong with a model's video fields (num_frames, temporal_patch_size,
  attention_layout), each naming the field and its fix; [] when nothing is. Works on a DiT or on
  any object with those attributes and depth/block_type (config checks use it before building)."""
  problems = []
  frames, pt, layout = model.num_frames, model.temporal_patch_size, model.attention_layout
  if frames < 0:
    problems.append(f"num_frames={frames} must be 0 (images) or the number of video frames")
  if pt < 1 or (frames == 0 and pt != 1):
    problems.append(f"temporal_patch_size={pt} must be 1 for images and >= 1 for videos")
  elif frames > 0 and frames % pt:
    problems.append(f"num_frames={frames} is not divisible by temporal_patch_size={pt}; "
                    f"use a number of frames that is a multiple of {pt}")
  if layout not in ATTENTION_LAYOUTS:
    problems.append(f"attention_layout={layout!r} must be one of {ATTENTION_LAYOUTS}")
  elif layout == "factorized":
    if model.depth % 2:
      problems.append(f"attention_layout='factorized' alternates spatial and temporal blocks: "
                      f"depth={model.depth} must be even")
    if model.block_type == "in_context":
      problems.append("attention_layout='factorized' cannot group the extra tokens of "
                      "block_type='in_context'; use 'joint' or another block type")
  return problems


def init_inputs(model: DiT, batch_size: int = 1):
  """Dummy (x, t, y) with the shapes ``model.init`` needs."""
  x = jnp.zeros((batch_size,) + model.input_shape, jnp.float32)
  return x, jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), jnp.int32)


def build_model(model_cfg: Mapping) -> DiT:
  """DiT from a config mapping of constructor kwargs.

  An optional ``variant`` key ("XL/2") is expanded by ``variant_kwargs``; explicit keys win.
  ``dtype``/``param_dtype`` may be strings ("float32", "bfloat16").
  """
  cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
  variant = cfg.pop("variant", None)
  kwargs = {**(variant_kwargs(variant) if variant else {}), **cfg}
  fields = {f.name for f in dataclasses.fields(DiT)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"config.model has unknown keys {unknown}; valid keys: variant, {sorted(fields)}.")
  for key in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in DTYPES:
        raise ValueError(f"config.model.{key}={kwargs[key]!r}; use one of {tuple(DTYPES)}.")
      kwargs[key] = DTYPES[kwargs[key]]
  return DiT(**kwargs)


def num_params(model: DiT) -> int:
  """Number of trainable parameters (no allocation; excludes the fixed position table)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model)))
  return sum(x.size for x in jax.tree.leaves(nn.unbox(shapes["params"])))
