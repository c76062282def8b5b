"""Rotary position embedding (RoPE) over token grids: axial, as FLUX and Lumina apply it to DiTs.

A query or key of head width hd is read as hd/2 pairs (feature i with feature i + hd/2); each
pair is rotated by the angle (position on its axis) x (its frequency). The pairs are split among
the grid's axes, in order and as evenly as ``np.array_split`` does ((t, h, w) for videos, (h, w)
for images), and an axis with m pairs uses the frequencies THETA^(-j/m), j = 0..m-1. The dot
product of a rotated query and key then depends on the two tokens' offset on the grid, not on
where they are, so what attention learns about a pattern holds at every whole-token shift of
it; with an absolute table (``layers.sincos_pos_embed_3d``) the model learns that per position.

``DiT(pos_embed=...)`` chooses "sincos" (the paper's absolute table only, the default), "rope"
(RoPE only) or "sincos+rope" (both).
"""
import jax
import jax.numpy as jnp
import numpy as np

THETA = 10000.0
POS_EMBEDS = ("sincos", "rope", "sincos+rope")


def head_width_problem(num_axes: int, head_dim: int) -> str:
  """Why RoPE over ``num_axes`` grid axes cannot rotate heads of width ``head_dim`` ("" if it
  can): every axis needs at least one pair of features."""
  if head_dim % 2 or head_dim < 2 * num_axes:
    return (f"RoPE over {num_axes} grid axes rotates pairs of head features: the head width "
            f"hidden_size / num_heads = {head_dim} must be even and at least {2 * num_axes}")
  return ""


def angles(grid: tuple[int, ...], head_dim: int) -> np.ndarray:
  """float32 (prod(grid), head_dim // 2): the rotation angle of each token and pair, tokens in
  row-major (frame-major for videos) order of ``grid``, the extents of the attended tokens."""
  problem = head_width_problem(len(grid), head_dim)
  if problem:
    raise ValueError(f"{problem}; use fewer heads.")
  pairs = head_dim // 2
  coords = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1)
  coords = coords.reshape(-1, len(grid)).astype(np.float64)
  parts = []
  for axis, share in enumerate(np.array_split(np.arange(pairs), len(grid))):
    freqs = THETA ** (-np.arange(len(share)) / len(share))
    parts.append(np.outer(coords[:, axis], freqs))
  return np.concatenate(parts, axis=1).astype(np.float32)


def rotate(x: jax.Array, token_angles: np.ndarray) -> jax.Array:
  """x (B, T, heads, head_dim) with each token's pairs rotated by ``token_angles`` (T0, hd/2),
  T0 <= T; tokens past T0 (in-context conditioning tokens) are left as they are."""
  extra = x.shape[1] - token_angles.shape[0]
  table = np.pad(token_angles, ((0, extra), (0, 0)))[None, :, None]
  cos, sin = jnp.asarray(np.cos(table), x.dtype), jnp.asarray(np.sin(table), x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


def rotate_queries_and_keys(q: jax.Array, k: jax.Array, grid: tuple[int, ...]):
  """(q, k), each (B, T, heads, head_dim), rotated by their tokens' places in ``grid``."""
  table = angles(grid, q.shape[-1])
  return rotate(q, table), rotate(k, table)
