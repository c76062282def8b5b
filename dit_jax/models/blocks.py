"""DiT transformer blocks and the combinations of designs they support.

The paper's four conditioning designs (``BLOCK_TYPES``), the text designs (``TEXT_BLOCK_TYPES``:
PixArt-alpha's cross-attention block, SD3's MM-DiT joint block), the video attention layouts
(``ATTENTION_LAYOUTS``: joint, or Latte's factorized spatial/temporal pairs) and the final layer;
``video_problems`` / ``text_problems`` say which field combinations cannot work, for the model
and for config checks before anything is built. ``dit_jax.models.dit.DiT`` assembles them.
"""
import functools
from typing import Any

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from dit_jax.models import layers, rope
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
ADAPTIVE_BLOCKS = ("adaln_zero", "adaln")

Dtype = Any


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
  is grouped, everything else acts per token. ``rope_grid`` is the model's whole token grid
  ((t, rows, cols) for videos, (rows, cols) for images; () for no RoPE): each attention rotates
  its queries and keys by their place in it (spatial attention sees one frame, temporal one
  patch position).
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
  rope_grid: tuple[int, ...] = ()

  def _attended_grid(self) -> tuple[int, ...]:
    """The extents of the token grid one self-attention sees (() without RoPE)."""
    if not self.rope_grid or self.attention_axis == "joint":
      return self.rope_grid
    frames, rows, cols = self.rope_grid
    return (1, rows, cols) if self.attention_axis == "spatial" else (frames, 1, 1)

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
        self._self_attention, layers.Attention(self.num_heads, self.attention_impl, name="attn",
                                              rope_grid=self._attended_grid(), **kw))
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
              frames=self.frames, rope_grid=self.rope_grid)
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
  so ``nn.scan`` threads the text stream through the blocks. The identity at init. With RoPE
  only the image queries and keys are rotated."""

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
    if self.rope_grid:  # image tokens only: the caption has no grid position
      image_qkv = (*rope.rotate_queries_and_keys(*image_qkv[:2], self.rope_grid), image_qkv[2])
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


def pos_embed_problems(model) -> list[str]:
  """What is wrong with a model's ``pos_embed`` (with hidden_size and num_heads): [] when
  nothing is. Works on a DiT or any object with those attributes."""
  if model.pos_embed not in rope.POS_EMBEDS:
    return [f"pos_embed={model.pos_embed!r} must be one of {rope.POS_EMBEDS}"]
  if "rope" not in model.pos_embed:
    return []
  problem = rope.head_width_problem(3 if model.num_frames else 2,
                                    model.hidden_size // max(model.num_heads, 1))
  if not problem:
    return []
  return [f"pos_embed={model.pos_embed!r}: {problem}; use fewer heads or pos_embed='sincos'"]


def text_problems(model) -> list[str]:
  """What is wrong with a model's text fields (context_dim, context_length, text_positions) with
  block_type, num_classes, attention_layout and attention_impl, each naming the field and its
  fix; [] when nothing is. Works on a DiT or any object with those attributes."""
  problems = []
  dim, block = model.context_dim, model.block_type
  if dim < 0 or model.context_length < 0:
    problems.append(f"context_dim={dim} and context_length={model.context_length} must be >= 0 "
                    "(context_dim 0: class-conditional)")
  if model.text_positions and not (model.text_vocab_size > 0 and model.context_length > 0):
    problems.append(f"text_positions=True adds positions to the model's own text encoder: it "
                    f"needs text_vocab_size > 0 (got {model.text_vocab_size}) and context_length "
                    f"> 0, the number of positions (got {model.context_length})")
  if dim == 0:
    if model.pooled_text:
      problems.append("pooled_text=True needs a text model: set context_dim to the text "
                      "encoder's width")
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
