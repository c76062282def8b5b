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

Text (``context_dim`` > 0) conditions on text-encoder outputs (B, L, context_dim) with a mask
(B, L) (True = real token, padding at the end of each row), per image or per video, through
PixArt-alpha's cross-attention block or SD3's MM-DiT joint block (``TEXT_BLOCK_TYPES``). Caption
dropout for classifier-free guidance reuses the label path: a text model has one class, y = 0
means "use the caption" and y = 1 (= num_classes, the null class) means "no caption": those
examples see the learned null text (one token, "null_context"), so guidance and label dropout
work exactly as for class models.
"""
import dataclasses
import functools
from typing import Any, Mapping

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from dit_jax.models import layers, t5
from dit_jax.models.layers import (EMBED, MODULATION, PATCH, TEXT_TOKENS, TOKENS, Dense,
                                   layer_norm, modulate)

# The paper's class-conditional designs; "cross_attention" attends to [t_emb, y_emb] there.
BLOCK_TYPES = ("adaln_zero", "adaln", "cross_attention", "in_context")
# Text-conditioned designs (context_dim > 0): PixArt-alpha's adaLN-Zero block with
# cross-attention to the caption tokens, and SD3's MM-DiT joint block.
TEXT_BLOCK_TYPES = ("cross_attention", "mmdit")
# "joint": every block attends over all tokens; "factorized": blocks alternate attention within
# each frame ("spatial") and across frames at each patch position ("temporal"), Latte's variant 1.
ATTENTION_LAYOUTS = ("joint", "factorized")
TEXT_HEAD_DIM = 32  # head width of the model's own text encoder (text_vocab_size > 0)
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
  ``context`` (caption tokens (B, L, D), a text model's "cross_attention") the block is
  PixArt-alpha's: adaLN-Zero modulation from c (B, D), self-attention, cross-attention to the
  first ``context_lengths`` (B,) caption tokens (affine LayerNorm, zero-initialised output
  projection), MLP; the identity at init. With
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
  def __call__(self, x: jax.Array, cond: jax.Array | None, context: jax.Array | None = None,
               context_lengths: jax.Array | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    x = nn.with_logical_constraint(x, TOKENS)
    attn = functools.partial(
        self._self_attention, layers.Attention(self.num_heads, self.attention_impl, name="attn", **kw))
    mlp = layers.Mlp(self.mlp_ratio, name="mlp", **kw)
    text = context is not None
    if self.block_type in ADAPTIVE_BLOCKS or text:
      zero = self.block_type != "adaln"
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
      if text:
        cross = layers.CrossAttention(self.num_heads, self.attention_impl, name="cross_attn",
                                      proj_init=nn.initializers.zeros_init(), **kw)
        x = x + cross(layer_norm(True, name="norm_cross", **kw)(x), context, context_lengths)
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
  def __call__(self, x: jax.Array, cond: jax.Array | None, context: jax.Array | None = None,
               context_lengths: jax.Array | None = None):
    kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, block_type=self.block_type,
              attention_impl=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype,
              frames=self.frames)
    x = DiTBlock(name="spatial", attention_axis="spatial", **kw)(x, cond, context, context_lengths)
    x = DiTBlock(name="temporal", attention_axis="temporal", **kw)(x, cond, context, context_lengths)
    return (x, None) if self.scanned else x


class JointStream(nn.Module):
  """The weights of one token stream (image or text) of an MM-DiT block: adaLN-Zero modulation
  from c (6 chunks), non-affine LayerNorm, fused qkv, per-head QK RMSNorm, output projection
  and MLP. ``attention_inputs`` gives the stream's (q, k, v) and modulation; ``__call__`` adds
  its slice of the joint attention's output and its MLP, both gated."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float
  dtype: Dtype
  param_dtype: Dtype

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d, heads = self.hidden_size, self.num_heads
    self.adaLN_modulation = Dense((6 * d,), (EMBED,), (MODULATION,),
                                  kernel_init=nn.initializers.zeros_init(), **kw)
    self.qkv = Dense((3, heads, d // heads), (EMBED,), (layers.QKV, layers.HEADS, layers.KV), **kw)
    self.q_norm = layers.rms_norm(**kw)
    self.k_norm = layers.rms_norm(**kw)
    self.proj = Dense((d,), (layers.HEADS, layers.KV), (EMBED,), **kw)
    self.mlp = layers.Mlp(self.mlp_ratio, **kw)
    self.norm = layer_norm(**kw)

  def attention_inputs(self, x: jax.Array, cond: jax.Array):
    # Batch-sharded, features whole: without this constraint XLA 0.10's SPMD partitioner
    # mis-routes batch shards of the text stream on a data x fsdp x tensor mesh (CPU, measured).
    mod = nn.with_logical_constraint(self.adaLN_modulation(nn.silu(cond)), (layers.ACT_BATCH, None))
    mod = jnp.split(mod, 6, axis=-1)
    qkv = self.qkv(modulate(self.norm(x), mod[0], mod[1]))
    return (self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1]), qkv[:, :, 2]), mod

  def __call__(self, x: jax.Array, attended: jax.Array, mod) -> jax.Array:
    _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
    x = x + gate_msa[:, None] * self.proj(attended)
    return x + gate_mlp[:, None] * self.mlp(modulate(self.norm(x), shift_mlp, scale_mlp))


class MMDiTBlock(DiTBlock):
  """SD3's MM-DiT joint block: image tokens x (B, T, D) and caption tokens (B, L, D), each with
  its own ``JointStream`` weights ("x_block", "context_block"), one attention over the
  concatenation [image; text] in which only the first ``context_lengths`` (B,) text tokens are
  keys (the padding at the end is masked). Both streams are updated; the carry is (x, context)
  so ``nn.scan`` threads the text stream through the blocks. The identity at init."""

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, jax.Array], cond: jax.Array,
               context_lengths: jax.Array):
    x, context = carry
    x = nn.with_logical_constraint(x, TOKENS)
    context = nn.with_logical_constraint(context, TEXT_TOKENS)
    kw = dict(hidden_size=x.shape[-1], num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
              dtype=self.dtype, param_dtype=self.param_dtype)
    image, text = JointStream(name="x_block", **kw), JointStream(name="context_block", **kw)
    image_qkv, image_mod = image.attention_inputs(x, cond)
    text_qkv, text_mod = text.attention_inputs(context, cond)
    q, k, v = (jnp.concatenate(pair, axis=1) for pair in zip(image_qkv, text_qkv))
    tokens = x.shape[1]
    out = layers.attend(q, k, v, self.attention_impl, self.dtype, tokens + context_lengths)
    x = nn.with_logical_constraint(image(x, out[:, :tokens], image_mod), TOKENS)
    context = nn.with_logical_constraint(text(context, out[:, tokens:], text_mod), TEXT_TOKENS)
    return ((x, context), None) if self.scanned else (x, context)


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
               temporal_patch_size: int = 1, grid: tuple[int, int] | None = None) -> jax.Array:
  """(B, T, p*p*C) tokens in row-major grid order, features laid out (p_row, p_col, C) ->
  (B, H, W, C) images. ``grid`` is the (rows, cols) token grid of one frame, H = rows * p and
  W = cols * p; None means a square grid of T tokens. With ``frames`` > 0: frame-major tokens
  of tubelets, features (pt, p_row, p_col, C) -> (B, F, H, W, C) videos."""
  pt = temporal_patch_size
  gt = max(frames, 1) // pt
  if grid is None:
    side = int(round((x.shape[1] // gt) ** 0.5))
    grid = (side, side)
  out = einops.rearrange(x, "b (gt gh gw) (pt p q c) -> b (gt pt) (gh p) (gw q) c", gt=gt,
                         gh=grid[0], gw=grid[1], pt=pt, p=patch_size, q=patch_size, c=channels)
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

  Text: ``context_dim`` > 0 (the text encoder's width) makes a text model: ``num_classes`` = 1,
  ``block_type`` "cross_attention" (PixArt-alpha) or "mmdit" (SD3, joint layout only), called
  with ``context`` (B, L, context_dim) and ``context_mask`` (B, L). Caption tokens go through
  the caption MLP ("context_embedder"); the final layer is adaLN-Zero's for both designs.
  ``context_length`` is the padded caption length, used only by ``dit_gflops`` and
  ``model_kwargs_for_init`` (0 -> 1 token for init; any L works at call time).
  ``text_vocab_size`` > 0 gives the model its own small T5 encoder ("text_encoder",
  ``text_encoder_layers`` layers of width ``context_dim``, trained jointly with the DiT): its
  ``context`` is then token ids (B, L), as the digit-pairs default trains.

  Non-square inputs: ``input_width`` > 0 is the width W, with ``input_size`` the height H
  (0: square, W = H, the official case). Both must be multiples of ``patch_size``; tokens stay
  row-major over the (H/p, W/p) grid and the position table is the official formula on that
  grid (first half column, second half row), so several aspect ratios share one set of weights.
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
  context_dim: int = 0
  context_length: int = 0
  input_width: int = 0
  text_vocab_size: int = 0
  text_encoder_layers: int = 2

  @property
  def out_channels(self) -> int:
    return self.in_channels * 2 if self.learn_sigma else self.in_channels

  @property
  def temporal_tokens(self) -> int:
    """Tubelets along time (1 for images)."""
    return max(self.num_frames, 1) // self.temporal_patch_size

  @property
  def spatial_size(self) -> tuple[int, int]:
    """(H, W) of one image or frame: W = input_width, or input_size when that is 0."""
    return self.input_size, self.input_width or self.input_size

  @property
  def grid_size(self) -> tuple[int, int]:
    """(rows, cols) of one frame's token grid: (H / patch_size, W / patch_size)."""
    return tuple(side // self.patch_size for side in self.spatial_size)

  @property
  def num_tokens(self) -> int:
    rows, cols = self.grid_size
    return self.temporal_tokens * rows * cols

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one input: (H, W, C), or (F, H, W, C) for a video model."""
    frames = (self.num_frames,) if self.num_frames else ()
    return frames + self.spatial_size + (self.in_channels,)

  def _check(self, x: jax.Array):
    problems = []
    if self.input_size % self.patch_size:
      problems.append(f"input_size={self.input_size} must be a multiple of patch_size={self.patch_size}")
    if self.input_width < 0 or self.input_width % self.patch_size:
      problems.append(f"input_width={self.input_width} must be 0 (square) or a positive multiple "
                      f"of patch_size={self.patch_size}")
    if self.hidden_size % self.num_heads or self.hidden_size % 4:
      problems.append(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads} and by 4")
    if self.remat_policy != "none" and self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy={self.remat_policy!r} must be 'none' or one of {tuple(REMAT_POLICIES)}")
    if self.attention_impl not in layers.ATTENTION_IMPLS:
      problems.append(f"attention_impl={self.attention_impl!r} must be one of {layers.ATTENTION_IMPLS}")
    if self.block_type not in BLOCK_TYPES + TEXT_BLOCK_TYPES:
      problems.append(f"block_type={self.block_type!r} must be one of {BLOCK_TYPES} (class "
                      f"models) or {TEXT_BLOCK_TYPES} (text models, context_dim > 0)")
    problems += video_problems(self) + text_problems(self)
    expected = self.input_shape
    if tuple(x.shape[1:]) != expected:
      problems.append(f"input of shape {tuple(x.shape)} does not match (B, {expected}) of the config")
    if problems:
      raise ValueError("DiT config: " + "; ".join(problems) + ".")

  def _blocks(self, h: jax.Array, cond: jax.Array | None, context: jax.Array | None,
              context_lengths: jax.Array | None) -> jax.Array:
    factorized = self.attention_layout == "factorized"
    block, count = (FactorizedBlockPair, self.depth // 2) if factorized else (DiTBlock, self.depth)
    mmdit = self.block_type == "mmdit"
    if mmdit:  # the text stream is carried from block to block
      block, carry, args = MMDiTBlock, (h, context), (cond, context_lengths)
    else:
      carry, args = h, (cond, context, context_lengths)
    if self.remat_policy != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_blocks)
    kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, block_type=self.block_type,
              attention_impl=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype,
              frames=self.temporal_tokens)
    if self.scan_blocks:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * len(args), length=count,
                      metadata_params={nn.PARTITION_NAME: LAYERS})
      carry, _ = stack(name="blocks", scanned=True, **kw)(carry, *args)
    else:
      for i in range(count):
        carry = block(name=f"blocks_{i}", **kw)(carry, *args)
    return carry[0] if mmdit else carry  # mmdit: the text stream ends here

  def _encode_text(self, ids: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Token ids (B, L) -> (B, L, context_dim) by the model's own T5 encoder ("text_encoder",
    trained with the DiT: ``text_vocab_size`` > 0), 32-wide heads, gated-GELU MLP 2x wide."""
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"context of shape {ids.shape} ({ids.dtype}): a DiT with its own text "
                       f"encoder (text_vocab_size={self.text_vocab_size}) takes token ids (B, L) "
                       "as context.")
    if mask is None:
      mask = jnp.ones(ids.shape, bool)
    encoder = t5.T5Encoder(
        vocab_size=self.text_vocab_size, d_model=self.context_dim, d_kv=TEXT_HEAD_DIM,
        d_ff=2 * self.context_dim, num_layers=self.text_encoder_layers,
        num_heads=max(1, self.context_dim // TEXT_HEAD_DIM), feed_forward_proj="gated-gelu",
        dtype=self.dtype, param_dtype=self.param_dtype, name="text_encoder")
    return encoder(ids, mask)

  def _caption(self, context: jax.Array | None, context_mask: jax.Array | None,
               null: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Caption tokens (B, L, D) and the number of real tokens (B,) int32.

    Rows with ``null`` (dropped or null-class labels) and rows without any real token get the
    null text: the learned "null_context" vector as their one real token. Padded positions are
    zeroed before the caption MLP, so their values cannot reach the output.
    """
    if context is None:
      raise ValueError(f"DiT with context_dim={self.context_dim} is a text model: call it with "
                       "context=(B, L, context_dim) text-encoder outputs and context_mask=(B, L).")
    context = jnp.asarray(context)
    if self.text_vocab_size:
      context = self._encode_text(context, context_mask)
    if context.ndim != 3 or context.shape[-1] != self.context_dim:
      raise ValueError(f"context of shape {context.shape} does not match (B, L, "
                       f"context_dim={self.context_dim}); encode captions with a text encoder of "
                       f"width {self.context_dim} or set context_dim to the encoder's width.")
    mask = (jnp.ones(context.shape[:2], bool) if context_mask is None
            else jnp.asarray(context_mask).astype(bool))
    if mask.shape != context.shape[:2]:
      raise ValueError(f"context_mask of shape {mask.shape} does not match context "
                       f"{context.shape}: give one flag per caption token, (B, L).")
    null_context = self.param(
        "null_context", nn.with_logical_partitioning(nn.initializers.normal(0.02), (EMBED,)),
        (self.context_dim,), self.param_dtype)
    null = null | ~mask.any(axis=1)
    first = jnp.arange(context.shape[1]) == 0
    context = jnp.where(mask[..., None], context.astype(self.dtype), 0)
    null_row = jnp.where(first[:, None], null_context.astype(self.dtype), 0)
    context = jnp.where(null[:, None, None], null_row[None], context)
    mask = jnp.where(null[:, None], first[None], mask)
    tokens = layers.CaptionEmbedder(self.hidden_size, name="context_embedder", dtype=self.dtype,
                                    param_dtype=self.param_dtype)(context)
    return nn.with_logical_constraint(tokens, TEXT_TOKENS), mask.sum(axis=1, dtype=jnp.int32)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False,
               context: jax.Array | None = None, context_mask: jax.Array | None = None) -> jax.Array:
    """Model output (B, H, W, C_out) for images x (B, H, W, C) (H = input_size, W =
    input_width or input_size), timesteps t (B,), labels y (B,);
    (B, F, H, W, C_out) for videos x (B, F, H, W, C).

    ``train=True`` enables label dropout (needs the "dropout" RNG stream). Text models
    (``context_dim`` > 0) also take ``context`` (B, L, context_dim) and ``context_mask``
    (B, L) bool, True for real tokens, padding at the end of each row (None: no padding);
    y = 0 uses the caption, y = 1 (or a dropped label) the null text.
    """
    self._check(x)
    if self.context_dim == 0 and (context is not None or context_mask is not None):
      raise ValueError("context was given to a class-conditional DiT (context_dim=0); set "
                       "context_dim to the text encoder's width and block_type to one of "
                       f"{TEXT_BLOCK_TYPES} for a text model.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.PatchEmbed(self.patch_size, self.hidden_size, self.temporal_patch_size,
                          name="x_embedder", **kw)(x)
    # A constant, not a parameter; the 2-D table for images (one temporal token).
    pos = layers.sincos_pos_embed_3d(self.hidden_size, self.temporal_tokens, self.grid_size)
    h = h + jnp.asarray(pos, self.dtype)[None]
    t_emb = layers.TimestepEmbedder(self.hidden_size, name="t_embedder", **kw)(t)
    labels = layers.LabelEmbedder(self.num_classes, self.hidden_size, self.class_dropout_prob,
                                  name="y_embedder", **kw)
    text = self.context_dim > 0
    if text:  # drop first, so the captions of dropped labels are nulled too
      y = labels.drop(y, train)
      tokens, lengths = self._caption(context, context_mask, y == self.num_classes)
    y_emb = labels(y, train and not text)
    c = t_emb + y_emb
    cond = None
    if self.block_type in ADAPTIVE_BLOCKS or text:
      cond = c
    elif self.block_type == "cross_attention":
      cond = jnp.stack([t_emb, y_emb], axis=1)
    else:  # in_context: two extra tokens, removed after the last block
      h = jnp.concatenate([h, t_emb[:, None], y_emb[:, None]], axis=1)
    h = nn.with_logical_constraint(h, TOKENS)
    h = self._blocks(h, cond, *((tokens, lengths) if text else (None, None)))
    h = h[:, :self.num_tokens]
    final = "adaln_zero" if text else self.block_type
    h = FinalLayer(self.patch_size, self.out_channels, final, name="final_layer",
                   temporal_patch_size=self.temporal_patch_size, **kw)(h, c)
    out = unpatchify(h, self.patch_size, self.out_channels, self.num_frames,
                     self.temporal_patch_size, self.grid_size)
    return out.astype(jnp.float32)

  def forward_with_cfg(self, x: jax.Array, t: jax.Array, y: jax.Array, cfg_scale,
                       guidance_channels: int | None = 3, context: jax.Array | None = None,
                       context_mask: jax.Array | None = None) -> jax.Array:
    """Classifier-free guidance with the official batch convention.

    The batch is [conditional half; unconditional half] (y of the second half = num_classes).
    Only the first half of x is used (duplicated). The guided prediction
    uncond + cfg_scale * (cond - uncond) replaces output channels [0, guidance_channels) in both
    halves (3 by default, as the released code hard-codes; None guides every channel); the
    other channels (e.g. the learned variance) pass through unguided. Text models take the
    full-batch ``context`` / ``context_mask``; the null labels of the second half null its text.
    """
    half = x[: x.shape[0] // 2]
    text = {} if context is None else dict(context=context, context_mask=context_mask)
    out = self(jnp.concatenate([half, half], axis=0), t, y, **text)
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


def text_problems(model) -> list[str]:
  """What is wrong with a model's text fields (context_dim, context_length) in combination with
  block_type, num_classes, attention_layout and attention_impl, each naming the field and its
  fix; [] when nothing is. Works on a DiT or any object with those attributes."""
  problems = []
  dim, block = model.context_dim, model.block_type
  if dim < 0 or model.context_length < 0:
    problems.append(f"context_dim={dim} and context_length={model.context_length} must be >= 0 "
                    "(context_dim 0: class-conditional)")
  if dim == 0:
    if block == "mmdit":
      problems.append("block_type='mmdit' is a text design: set context_dim to the text "
                      "encoder's width, or use a class-conditional block_type")
    return problems
  if block not in TEXT_BLOCK_TYPES:
    problems.append(f"block_type={block!r} does not read text (context_dim={dim}); use one of "
                    f"{TEXT_BLOCK_TYPES}")
  if model.num_classes != 1:
    problems.append(f"num_classes={model.num_classes} must be 1 for a text model (y = 0: the "
                    "caption, y = 1: the null text)")
  if block == "mmdit" and model.attention_layout != "joint":
    problems.append(f"attention_layout={model.attention_layout!r} cannot group the joint "
                    "image-text attention of block_type='mmdit'; use 'joint' or "
                    "block_type='cross_attention'")
  if model.attention_impl == "pallas":
    problems.append("attention_impl='pallas' cannot mask padded text tokens; use 'auto' (XLA "
                    "for masked attention on TPU) or 'xla'")
  return problems


def init_inputs(model: DiT, batch_size: int = 1):
  """Dummy positional (x, t, y) with the shapes ``model.init`` needs. Text models also need the
  keyword arguments of ``model_kwargs_for_init``: ``model.init(rng, *init_inputs(m),
  **model_kwargs_for_init(m))`` works for every model (positional inputs stay the three of the
  class models, so their call sites and jitted signatures do not change)."""
  x = jnp.zeros((batch_size,) + model.input_shape, jnp.float32)
  return x, jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), jnp.int32)


def model_kwargs_for_init(model: DiT, batch_size: int = 1) -> dict:
  """{} for class models; for text models dummy ``context`` (B, max(context_length, 1),
  context_dim) float32 (token ids (B, L) int32 with ``text_vocab_size``) and an all-True
  ``context_mask``."""
  if not model.context_dim:
    return {}
  length = max(model.context_length, 1)
  context = (jnp.zeros((batch_size, length), jnp.int32) if model.text_vocab_size
             else jnp.zeros((batch_size, length, model.context_dim), jnp.float32))
  return dict(context=context, context_mask=jnp.ones((batch_size, length), bool))


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
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *init_inputs(model), **model_kwargs_for_init(model)))
  return sum(x.size for x in jax.tree.leaves(nn.unbox(shapes["params"])))
