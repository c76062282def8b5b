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
from typing import Any, Mapping

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from dit_jax.models import layers, t5
from dit_jax.models.blocks import (ADAPTIVE_BLOCKS, BLOCK_TYPES, TEXT_BLOCK_TYPES, DiTBlock,
                                   FactorizedBlockPair, FinalLayer, MMDiTBlock,
                                   pos_embed_problems, text_problems, video_problems)
from dit_jax.models.layers import EMBED, TEXT_TOKENS, TOKENS

TEXT_HEAD_DIM = 32  # head width of the model's own text encoder (text_vocab_size > 0)
# Logical name of the leading layer axis of scanned parameters (no rule: replicated).
LAYERS = "layers"
# Remat policies by name; "none" disables rematerialization, "full" saves nothing.
REMAT_POLICIES = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    # Saves the tagged qkv projections, attention output and MLP hidden pre-activation
    # (layers.Attention, layers.Mlp): the backward pass recomputes only norms and elementwise ops.
    "qkv_attention_mlp_saveable": jax.checkpoint_policies.save_only_these_names(
        "qkv", "attention", "mlp_hidden"),
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
  ``context`` is then token ids (B, L), as the digit-pairs default trains;
  ``text_positions`` adds learned absolute positions (``context_length`` of them) to that
  encoder's token embeddings (``t5.T5Encoder.absolute_positions``). ``pooled_text``
  adds SD3's pooled conditioning: the mean of the caption's real text-encoder outputs, through
  an MLP ("pooled_embedder"), joins t_emb in c, so every adaLN modulation sees the caption.

  Non-square inputs: ``input_width`` > 0 is the width W, with ``input_size`` the height H
  (0: square, W = H, the official case). Both must be multiples of ``patch_size``; tokens stay
  row-major over the (H/p, W/p) grid and the position table is the official formula on that
  grid (first half column, second half row), so several aspect ratios share one set of weights.

  Positions: ``pos_embed`` "sincos" (the paper's fixed table added to the tokens), "rope"
  (rotary embedding of each self-attention's queries and keys over the token grid,
  ``dit_jax.models.rope``: attention then sees offsets, not places) or "sincos+rope".
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
  text_positions: bool = False
  pooled_text: bool = False
  pos_embed: str = "sincos"

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
  def rope_grid(self) -> tuple[int, ...]:
    """The token grid RoPE rotates over: (tubelets, rows, cols) for videos, (rows, cols) for
    images; () when ``pos_embed`` has no RoPE."""
    if "rope" not in self.pos_embed:
      return ()
    return ((self.temporal_tokens,) if self.num_frames else ()) + self.grid_size

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
    problems += video_problems(self) + text_problems(self) + pos_embed_problems(self)
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
              frames=self.temporal_tokens, rope_grid=self.rope_grid)
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
        absolute_positions=self.context_length if self.text_positions else 0,
        dtype=self.dtype, param_dtype=self.param_dtype, name="text_encoder")
    return encoder(ids, mask)

  def _caption(self, context: jax.Array | None, context_mask: jax.Array | None,
               null: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Caption tokens (B, L, D), the number of real tokens (B,) int32 and the mean of the real
    text-encoder outputs (B, context_dim).

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
    lengths = mask.sum(axis=1, dtype=jnp.int32)
    pooled = context.sum(axis=1) / lengths[:, None].astype(context.dtype)  # padding is zero
    return nn.with_logical_constraint(tokens, TEXT_TOKENS), lengths, pooled

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
    if "sincos" in self.pos_embed:  # a constant, not a parameter; 2-D for images
      pos = layers.sincos_pos_embed_3d(self.hidden_size, self.temporal_tokens, self.grid_size)
      h = h + jnp.asarray(pos, self.dtype)[None]
    t_emb = layers.TimestepEmbedder(self.hidden_size, name="t_embedder", **kw)(t)
    labels = layers.LabelEmbedder(self.num_classes, self.hidden_size, self.class_dropout_prob,
                                  name="y_embedder", **kw)
    text = self.context_dim > 0
    if text:  # drop first, so the captions of dropped labels are nulled too
      y = labels.drop(y, train)
      tokens, lengths, pooled = self._caption(context, context_mask, y == self.num_classes)
    y_emb = labels(y, train and not text)
    c = t_emb + y_emb
    if text and self.pooled_text:
      c = c + layers.CaptionEmbedder(self.hidden_size, name="pooled_embedder", **kw)(pooled)
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
