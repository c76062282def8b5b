"""DiT building blocks: projections, attention, MLP, embeddings, norms, position table.

Every parameter is created through ``nn.with_logical_partitioning`` with the logical axis names
of ``dit_jax.sharding`` (the mapping to mesh axes is configuration, not model code), and every
module takes ``dtype`` (compute) and ``param_dtype`` (storage). Numerically sensitive pieces stay
in float32 whatever ``dtype`` is: LayerNorm statistics, timestep features and the attention
softmax (``jax.nn.dot_product_attention`` computes its logits in at least float32). The fixed
position table is built in float64 numpy, as the official code does.

Conventions follow the official DiT release (see docs/model.md): fused qkv laid out
(3, heads, head_dim), tanh GELU, LayerNorm eps 1e-6, timestep features [cos, sin].

Attention kernels (``attention_impl``): "xla" (any backend), "cudnn" (cuDNN fused attention on
NVIDIA GPUs, bf16/fp16), "pallas" (jax's Pallas flash attention kernel for TPU) and "auto", which
picks one of them at trace time from the device and the compute dtype
(``resolve_attention_impl``). Attention can mask padded keys at the end of each row
(``attend(..., kv_lengths=...)``, through ``jax.nn.dot_product_attention``'s
``key_value_seq_lengths``, which the XLA and cuDNN paths take); the Pallas kernel takes no mask,
so "auto" falls back to XLA for masked attention and an explicit "pallas" is an error.

Text conditioning (``DiT(context_dim > 0)``) adds the caption projection ``CaptionEmbedder`` and
the per-head query/key ``rms_norm`` of the MM-DiT block.
"""
import math
from typing import Any, Callable, Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

from dit_jax.models import rope

# Logical axis names (keep identical to dit_jax.sharding.DEFAULT_LOGICAL_AXIS_RULES).
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
QKV = "qkv"
MODULATION = "modulation"
PATCH = "patch"
CLASSES = "classes"
FREQ = "freq"
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
# Activation layouts constrained at block boundaries and inside attention / MLP.
TOKENS = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)
HEAD_TOKENS = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_KV)
MLP_TOKENS = (ACT_BATCH, ACT_LENGTH, ACT_MLP)
# Text tokens: their (short, padded) length axis stays whole; the image tokens take "sequence".
TEXT_TOKENS = (ACT_BATCH, None, ACT_EMBED)

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas")
# Sequence lengths the Pallas TPU kernel takes: multiples of its smallest key block (128 lanes).
PALLAS_BLOCK = pallas_flash.MIN_BLOCK_SIZE
LAYER_NORM_EPS = 1e-6
RMS_NORM_EPS = 1e-6  # SD3's query/key RMSNorm
TIMESTEP_FEATURES = 256
MAX_PERIOD = 10000.0

Dtype = Any
Initializer = Callable[..., jax.Array]


def xavier_uniform(in_axis=-2, out_axis=-1) -> Initializer:
  """Glorot uniform over a (possibly multi-axis) kernel, as torch's xavier_uniform_ on the
  equivalent 2-D (in, out) matrix: fans are the products of the in and out axis sizes."""
  return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis,
                                          out_axis=out_axis)


class Dense(nn.Module):
  """Linear map contracting the last ``len(in_names)`` axes of x into ``features``.

  The kernel has shape ``in_shape + features`` with logical names ``in_names + out_names``
  and is stored in ``param_dtype``; the matmul runs in ``dtype``. Used for every projection
  (fused qkv as (D, 3, heads, head_dim), attention output as (heads, head_dim, D), ...), so
  each parameter carries one logical name per axis (rank-correct under ``jax.set_mesh``).
  """
  features: Sequence[int]
  in_names: Sequence[str | None]
  out_names: Sequence[str | None]
  use_bias: bool = True
  kernel_init: Initializer | None = None
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in, n_out = len(self.in_names), len(self.out_names)
    features = tuple(self.features)
    in_shape = x.shape[-n_in:]
    in_axes = tuple(range(n_in))
    out_axes = tuple(range(n_in, n_in + n_out))
    kernel_init = self.kernel_init or xavier_uniform(in_axes, out_axes)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(kernel_init, tuple(self.in_names) + tuple(self.out_names)),
        in_shape + features, self.param_dtype)
    x = x.astype(self.dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), in_axes)
    y = jax.lax.dot_general(x, kernel.astype(self.dtype), (contract, ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, tuple(self.out_names)),
                        features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def layer_norm(affine: bool = False, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
  """Flax's LayerNorm over the last axis as DiT uses it: eps 1e-6, float32 statistics computed in
  two passes (mean, then the mean of squared deviations, as torch's LayerNorm; not flax's
  default single-pass E[x^2] - E[x]^2), output in ``dtype``.

  adaLN blocks use it without affine parameters (``affine=False``: the modulation supplies scale
  and shift); the in-context / cross-attention blocks of the paper use the affine version, whose
  ``scale`` and ``bias`` are partitioned along EMBED.
  """
  return nn.LayerNorm(
      epsilon=LAYER_NORM_EPS, use_scale=affine, use_bias=affine, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (EMBED,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (EMBED,)),
      dtype=dtype, param_dtype=param_dtype, name=name)


def rms_norm(*, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
             name: str | None = None) -> nn.RMSNorm:
  """RMSNorm over the last axis (eps 1e-6, float32 statistics, learned scale initialised to 1),
  applied per head to queries and keys (B, T, heads, head_dim) by the MM-DiT block (SD3's
  QK-norm): the scale has one value per head_dim feature, shared by the heads."""
  return nn.RMSNorm(epsilon=RMS_NORM_EPS, dtype=dtype, param_dtype=param_dtype,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (KV,)),
                    name=name)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation of normalized tokens x (B, T, D) by per-example shift/scale (B, D)."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def resolve_attention_impl(impl: str, dtype: Dtype, platform: str, device_kind: str = "") -> str:
  """The attention kernel ``impl`` means for ``dtype`` compute on a ``platform`` device.

  Explicit choices ("xla", "cudnn", "pallas") stand. "auto" picks cuDNN fused attention on
  NVIDIA GPUs (platform "gpu", ``device_kind`` "NVIDIA ...") for bfloat16/float16 compute (cuDNN
  has no float32 flash attention), the Pallas flash attention kernel on TPU, and XLA elsewhere
  (CPU, float32 or non-NVIDIA GPUs). Raises ValueError naming ``attention_impl`` for any other
  value.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is not supported; use one of {ATTENTION_IMPLS}.")
  if impl != "auto":
    return impl
  if platform == "tpu":
    return "pallas"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if platform == "gpu" and device_kind.startswith("NVIDIA") and half:
    return "cudnn"
  return "xla"


def trace_device() -> tuple[str, str]:
  """(platform, device_kind) of the devices being traced for: those of the mesh entered with
  ``jax.set_mesh`` (an AOT compile for a TPU topology on a CPU host targets the TPU), else the
  default device."""
  # abstract_device is None without a mesh; getattr also covers an AbstractMesh without it.
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None) or jax.devices()[0]
  return device.platform, device.device_kind


def _shard_spec(shape: Sequence[int], mesh) -> jax.sharding.PartitionSpec:
  """The (B, T, heads, head_dim) activation layout of the logical rules in context, with the
  token and head_dim axes whole (a flash kernel sees every key) and any mesh axes that do not
  divide their dimension dropped."""
  spec = []
  for i, axes in enumerate(nn.logical_to_mesh_axes(HEAD_TOKENS)):
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a in mesh.shape)
    whole = i in (1, 3) or shape[i] % math.prod(mesh.shape[a] for a in axes)
    spec.append(None if whole or not axes else axes)
  return jax.sharding.PartitionSpec(*spec)


def _pallas_attention(q, k, v) -> jax.Array:
  """jax's Pallas TPU flash attention (non-causal, scale 1/sqrt(head_dim)) on (B, T, heads,
  head_dim) arrays. Under a mesh it runs per shard through ``shard_map``: XLA cannot partition
  the kernel's custom call and would otherwise gather the whole batch onto every chip."""
  scale = q.shape[-1] ** -0.5

  def kernel(q, k, v):
    q, k, v = (einops.rearrange(a, "b t h d -> b h t d") for a in (q, k, v))
    out = pallas_flash.flash_attention(q, k, v, sm_scale=scale)
    return einops.rearrange(out, "b h t d -> b t h d")

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return kernel(q, k, v)
  spec = _shard_spec(q.shape, mesh)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                       check_vma=False)(q, k, v)


def attend(q, k, v, impl: str, dtype: Dtype, kv_lengths: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim)) v on (B, T, heads, head_dim) arrays with the kernel
  ``impl`` resolves to here (see ``resolve_attention_impl``).

  ``kv_lengths`` (B,) masks keys: row b attends to its first kv_lengths[b] keys only (padding
  at the end of the key sequence). "auto" falls back to XLA where the Pallas kernel cannot run:
  sequence lengths that are not multiples of PALLAS_BLOCK (e.g. the 2-token context of
  cross-attention) or a key mask; an explicit "pallas" there is an error.
  """
  kernel = resolve_attention_impl(impl, dtype, *trace_device())
  q_len, kv_len = q.shape[1], k.shape[1]
  if kernel == "pallas" and (q_len % PALLAS_BLOCK or kv_len % PALLAS_BLOCK):
    if impl == "pallas":
      raise ValueError(
          f"attention_impl='pallas' needs query and key lengths that are multiples of "
          f"{PALLAS_BLOCK}, got {q_len} and {kv_len}; use attention_impl='auto' or 'xla'.")
    kernel = "xla"
  if kernel == "pallas" and kv_lengths is not None:
    if impl == "pallas":
      raise ValueError("attention_impl='pallas' cannot mask padded keys (text tokens); use "
                       "attention_impl='auto' or 'xla'.")
    kernel = "xla"
  q, k, v = (nn.with_logical_constraint(a.astype(dtype), HEAD_TOKENS) for a in (q, k, v))
  if kernel == "pallas":
    out = _pallas_attention(q, k, v)
  else:
    lengths = None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                       implementation=kernel)
  return nn.with_logical_constraint(out, HEAD_TOKENS)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (official layout (3, heads, hd)).

  ``attention_impl``: "auto" (default), "xla", "cudnn" or "pallas" (see the module docstring).
  The q, k, v projections and the attention output are tagged "qkv" and "attention" for remat
  policies (``checkpoint_name``). ``rope_grid`` (the extents of the attended token grid, e.g.
  (rows, cols)) rotates queries and keys by their grid position (``dit_jax.models.rope``);
  () leaves them as they are, as the paper's model does.
  """
  num_heads: int
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  rope_grid: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    hd = d // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = Dense((3, self.num_heads, hd), (EMBED,), (QKV, HEADS, KV), name="qkv", **kw)(x)
    q, k, v = (checkpoint_name(qkv[:, :, i], "qkv") for i in range(3))
    if self.rope_grid:
      q, k = rope.rotate_queries_and_keys(q, k, self.rope_grid)
    out = checkpoint_name(attend(q, k, v, self.attention_impl, self.dtype), "attention")
    return Dense((d,), (HEADS, KV), (EMBED,), name="proj", **kw)(out)


class CrossAttention(nn.Module):
  """Multi-head cross-attention: queries from x (B, T, D), keys/values from context (B, S, D).

  Used by the paper's cross-attention block design with the length-2 context [t_emb, y_emb],
  and by the text cross-attention block with caption tokens, whose padding ``kv_lengths`` (B,)
  masks (see ``attend``) and whose output projection starts at zero (``proj_init``).
  """
  num_heads: int
  attention_impl: str = "auto"
  proj_init: Initializer | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               kv_lengths: jax.Array | None = None) -> jax.Array:
    d = x.shape[-1]
    hd = d // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = Dense((self.num_heads, hd), (EMBED,), (HEADS, KV), name="q", **kw)(x)
    kv = Dense((2, self.num_heads, hd), (EMBED,), (QKV, HEADS, KV), name="kv", **kw)(context)
    out = attend(q, kv[:, :, 0], kv[:, :, 1], self.attention_impl, self.dtype, kv_lengths)
    return Dense((d,), (HEADS, KV), (EMBED,), name="proj", kernel_init=self.proj_init, **kw)(out)


class Mlp(nn.Module):
  """Token MLP: D -> mlp_ratio * D, GELU (tanh approximation), -> D; the hidden pre-activation
  is tagged "mlp_hidden" for remat policies."""
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = checkpoint_name(Dense((int(d * self.mlp_ratio),), (EMBED,), (MLP,), name="fc1", **kw)(x),
                        "mlp_hidden")
    h = nn.with_logical_constraint(nn.gelu(h, approximate=True), MLP_TOKENS)
    return Dense((d,), (MLP,), (EMBED,), name="fc2", **kw)(h)


def timestep_features(t: jax.Array, dim: int = TIMESTEP_FEATURES) -> jax.Array:
  """Sinusoidal timestep features [cos(t f), sin(t f)], f_i = exp(-ln(10000) i / (dim/2)).

  Computed in float32 (t may be integer or fractional) as the official code does. The
  frequencies are a constant: exp of the official float32 exponents, correctly rounded to
  float32 (XLA's own float32 exp may differ by an ulp, which t ~ 1000 turns into 6e-5 in t f).
  """
  half = dim // 2
  exponents = np.float32(-math.log(MAX_PERIOD)) * np.arange(half, dtype=np.float32) / np.float32(half)
  freqs = jnp.asarray(np.exp(exponents.astype(np.float64)).astype(np.float32))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nn.Module):
  """Timestep -> D vector: 256 sinusoidal features, Linear, SiLU, Linear (init N(0, 0.02))."""
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.normal(0.02))
    h = Dense((self.hidden_size,), (FREQ,), (EMBED,), name="mlp_0", **kw)(timestep_features(t))
    # A logical name may appear once per array: the D x D kernel shards its input axis only.
    return Dense((self.hidden_size,), (EMBED,), (None,), name="mlp_2", **kw)(nn.silu(h))


class LabelEmbedder(nn.Module):
  """Class label -> D vector, with label dropout for classifier-free guidance.

  With ``dropout_prob > 0`` the table has ``num_classes + 1`` rows; the last row is the null
  class. In training each label is replaced by the null class with probability
  ``dropout_prob`` using the "dropout" RNG stream (``drop``; text models call it first to learn
  which captions to null, then embed the dropped labels with ``train=False``).
  """
  num_classes: int
  hidden_size: int
  dropout_prob: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def drop(self, labels: jax.Array, train: bool) -> jax.Array:
    """int32 labels, each replaced by num_classes with probability dropout_prob in training."""
    labels = jnp.asarray(labels, jnp.int32)
    if train and self.dropout_prob > 0:
      drop = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.dropout_prob
      labels = jnp.where(drop, self.num_classes, labels)
    return labels

  @nn.compact
  def __call__(self, labels: jax.Array, train: bool) -> jax.Array:
    rows = self.num_classes + int(self.dropout_prob > 0)
    table = self.param("embedding_table",
                       nn.with_logical_partitioning(nn.initializers.normal(0.02), (CLASSES, EMBED)),
                       (rows, self.hidden_size), self.param_dtype)
    return jnp.take(table, self.drop(labels, train), axis=0).astype(self.dtype)


class CaptionEmbedder(nn.Module):
  """Text-encoder outputs (B, L, context_dim) -> caption tokens (B, L, D): PixArt-alpha's caption
  MLP (Linear, GELU tanh, Linear; kernels N(0, 0.02) as PixArt initialises them). The hidden
  axis shards over "mlp" (tensor), the input width over "embed" (fsdp)."""
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.normal(0.02))
    h = Dense((self.hidden_size,), (EMBED,), (MLP,), name="fc1", **kw)(context)
    h = nn.gelu(h, approximate=True)
    return Dense((self.hidden_size,), (MLP,), (EMBED,), name="fc2", **kw)(h)


class PatchEmbed(nn.Module):
  """Non-overlapping patches to tokens: conv with kernel = stride = patch, VALID, channels last.

  Images (B, H, W, C): kernel in Flax Conv layout (p, p, C, D), xavier-uniform on its flattened
  (p*p*C, D) view as the official init; token k = row * (W/p) + col. Videos (B, F, H, W, C):
  tubelets of ``temporal_patch_size`` (pt) frames, kernel (pt, p, p, C, D); with pt = 1 the
  kernel is the image one applied to every frame, so image weights load into a video model.
  Video tokens come out frame-major: token k = (t * H/p + row) * (W/p) + col.
  """
  patch_size: int
  hidden_size: int
  temporal_patch_size: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, pt, c = self.patch_size, self.temporal_patch_size, x.shape[-1]
    window = (pt, p, p) if pt > 1 else (p, p)
    n = len(window)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(xavier_uniform(tuple(range(n + 1)), n + 1),
                                               (None,) * (n + 1) + (EMBED,)),
        window + (c, self.hidden_size), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (EMBED,)),
                      (self.hidden_size,), self.param_dtype)
    batch = x.shape[0]
    if x.ndim == 5 and pt == 1:  # frames as images
      x = einops.rearrange(x, "b f h w c -> (b f) h w c")
    spatial = "DHW"[-n:]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=window, padding="VALID",
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    y = y + bias.astype(self.dtype)
    return y.reshape((batch, -1, self.hidden_size))


def grid_shape(grid: int | Sequence[int]) -> tuple[int, int]:
  """(rows, cols) of a token grid given as one int (square) or a (grid_h, grid_w) pair."""
  rows, cols = (grid, grid) if np.ndim(grid) == 0 else tuple(grid)
  return int(rows), int(cols)


def sincos_pos_embed_2d(embed_dim: int, grid: int | Sequence[int]) -> np.ndarray:
  """Fixed 2-D sin-cos position table (grid_h * grid_w, embed_dim), float64, official layout.

  ``grid`` is the token grid: an int for a square grid (the official case) or
  (grid_h, grid_w). Tokens are row-major (token k = r * grid_w + c). For token (r, c): the
  first embed_dim/2 features encode the column c, the last the row r; each half is
  [sin(pos w_j)] then [cos(pos w_j)], w_j = 10000^(-j / (embed_dim/4)).
  """
  if embed_dim % 4:
    raise ValueError(f"hidden_size={embed_dim} must be divisible by 4 for the 2-D sin-cos table.")
  grid_h, grid_w = grid_shape(grid)
  quarter = embed_dim // 4
  omega = 1.0 / MAX_PERIOD ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                           np.arange(grid_w, dtype=np.float64), indexing="ij")

  def encode(pos):
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([encode(cols), encode(rows)], axis=1)


def sincos_pos_embed_1d(embed_dim: int, length: int) -> np.ndarray:
  """Fixed 1-D sin-cos table (length, embed_dim), float64: [sin(pos w_j)] then [cos(pos w_j)],
  w_j = 10000^(-j / (embed_dim/2)) (MAE's get_1d_sincos_pos_embed_from_grid, which Latte and
  Open-Sora use for frame positions)."""
  if embed_dim % 2:
    raise ValueError(f"hidden_size={embed_dim} must be even for the 1-D sin-cos table.")
  half = embed_dim // 2
  omega = 1.0 / MAX_PERIOD ** (np.arange(half, dtype=np.float64) / half)
  out = np.outer(np.arange(length, dtype=np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_3d(embed_dim: int, frames: int, grid: int | Sequence[int]) -> np.ndarray:
  """Fixed spacetime table (frames * grid_h * grid_w, embed_dim), frame-major token order: the
  2-D table of each frame's grid (``grid``: an int, square, or (grid_h, grid_w)) plus the 1-D
  table of the frame index (Latte / Open-Sora's spatial + temporal sum). A single frame gets no
  temporal term, so the table of F = 1 is the image model's 2-D table exactly."""
  spatial = sincos_pos_embed_2d(embed_dim, grid)
  if frames == 1:
    return spatial
  temporal = sincos_pos_embed_1d(embed_dim, frames)
  return (temporal[:, None, :] + spatial[None, :, :]).reshape((-1, embed_dim))
