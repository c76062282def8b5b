"""Rotary position embedding (dit_jax.models.rope) against closed forms.

- The angle table against its formula written out for a small grid.
- The rotation against complex multiplication: pair (x_i, x_{i + hd/2}) is the complex number
  x_i + i x_{i + hd/2} times exp(i angle).
- The property RoPE exists for: a rotated query-key product depends on the tokens' offset on
  the grid only.
- The attention module with RoPE against numpy attention over the rotated queries and keys.
"""
import jax
import numpy as np
import pytest
from flax import linen as nn

from dit_jax.models import layers, rope


def _complex_rotation(x, angles):
  half = x.shape[-1] // 2
  z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * angles)
  return np.concatenate([z.real, z.imag], axis=-1)


def test_angles_closed_form():
  # 6 pairs over (t, h, w): 2 each, frequencies 1 and THETA^(-1/2)
  table = rope.angles((2, 3, 4), head_dim=12)
  slow = rope.THETA ** -0.5
  assert table.shape == (24, 6)
  for index, (t, r, c) in enumerate(np.ndindex(2, 3, 4)):
    np.testing.assert_allclose(table[index], [t, t * slow, r, r * slow, c, c * slow], rtol=1e-6)
  # an image grid: 4 pairs over (h, w), frequencies 1, THETA^(-1/2) on each
  np.testing.assert_allclose(rope.angles((2, 2), head_dim=8)[3], [1, slow, 1, slow], rtol=1e-6)


def test_rotation_is_complex_multiplication_and_leaves_extra_tokens():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 3, 12)).astype(np.float32)
  table = rope.angles((2, 3), head_dim=12)  # 6 grid tokens; the 7th is an in-context token
  out = np.asarray(rope.rotate(x, table))
  want = _complex_rotation(x[:, :6], table[None, :, None])
  np.testing.assert_allclose(out[:, :6], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[:, 6], x[:, 6])


def test_query_key_products_depend_on_grid_offsets_only():
  grid, hd = (3, 4, 5), 24
  rng = np.random.default_rng(1)
  q, k = rng.standard_normal((2, hd)).astype(np.float32)
  tokens = int(np.prod(grid))
  rotated_q = np.asarray(rope.rotate(np.broadcast_to(q, (1, tokens, 1, hd)), rope.angles(grid, hd)))
  rotated_k = np.asarray(rope.rotate(np.broadcast_to(k, (1, tokens, 1, hd)), rope.angles(grid, hd)))
  scores = rotated_q[0, :, 0] @ rotated_k[0, :, 0].T
  coords = list(np.ndindex(*grid))
  by_offset = {}
  for a, ca in enumerate(coords):
    for b, cb in enumerate(coords):
      by_offset.setdefault(tuple(np.subtract(cb, ca)), []).append(scores[a, b])
  spreads = [np.ptp(v) for v in by_offset.values()]
  assert max(spreads) < 1e-4
  assert np.ptp([v[0] for v in by_offset.values()]) > 1.0  # and the offset does matter


@pytest.mark.parametrize("grid", [(2, 3), (2, 1, 3)])
def test_attention_rotates_queries_and_keys(grid):
  heads, d = 2, 24
  tokens = int(np.prod(grid))
  module = layers.Attention(heads, "xla", rope_grid=grid)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, tokens, d)).astype(np.float32)
  variables = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32) * 0.3,
                           nn.unbox(module.init(jax.random.key(0), x)))
  out = np.asarray(module.apply(variables, x))
  p = jax.tree.map(np.asarray, variables["params"])
  qkv = np.einsum("btd,dshk->btshk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
  table = rope.angles(grid, d // heads)[None, :, None]
  q, k, v = _complex_rotation(qkv[:, :, 0], table), _complex_rotation(qkv[:, :, 1], table), qkv[:, :, 2]
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(d // heads)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhqs,bshk->bqhk", weights, v)
  want = np.einsum("bqhk,hkd->bqd", attended, p["proj"]["kernel"]) + p["proj"]["bias"]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
