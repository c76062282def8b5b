"""DiT model checks against closed-form facts and DIT-FACTS.md numbers.

- The 12 official parameter counts (DIT-FACTS.md; they include the T x D position table that
  the official code stores and we compute as a constant, so we add T * D), from jax.eval_shape.
- adaLN-Zero is the identity at init (every block, and the zero final layer).
- Output/param shapes for the four block designs x learn_sigma x patch 2/4/8 x odd class counts.
- The 2-D sin-cos table and timestep features against their closed-form definitions.
- Label dropout, variant/config parsing, scan == unrolled, remat == no remat (values and grads).
- Sharding on a 2x2x2 (data, fsdp, tensor) mesh follows the logical axis rules and gives the
  one-device output.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dit_jax import sharding
from dit_jax.models import layers
from dit_jax.models.dit import (BLOCK_TYPES, DiT, DiTBlock, build_model, init_inputs, num_params,
                                variant_kwargs)

OFFICIAL_PARAMS = {
    "S/2": 32_963_360, "S/4": 32_945_024, "S/8": 33_148_160,
    "B/2": 130_512_416, "B/4": 130_475_648, "B/8": 130_881_536,
    "L/2": 458_102_816, "L/4": 458_053_760, "L/8": 458_594_816,
    "XL/2": 675_129_632, "XL/4": 675_074_432, "XL/8": 675_683_072,
}
TINY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4,
            num_classes=7)


def _key(seed):
  # XLA's RngBitGenerator compiles ~3x faster on CPU than threefry; the tests need speed only.
  return jax.random.key(seed, impl="rbg")


def _init(model, batch=2, seed=0):
  # Jitted: one compile per model instead of one per op (eager Flax is slow on 2 CPU cores).
  return jax.jit(lambda: model.init(_key(seed), *init_inputs(model, batch)))()


def _random_variables(model, seed=0, scale=0.2):
  """Random N(0, scale^2) values for every parameter (no init compile; never all zeros)."""
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(_key(0), *init_inputs(model))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (scale * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


def _apply(model, variables, *args, **kwargs):
  return jax.jit(lambda v, a: model.apply(v, *a, **kwargs))(variables, args)


def _inputs(model, batch=4, seed=1):
  kx, kt, ky = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (batch, model.input_size, model.input_size, model.in_channels))
  return x, jax.random.randint(kt, (batch,), 0, 1000), jax.random.randint(ky, (batch,), 0, model.num_classes)


@pytest.mark.parametrize("variant", sorted(OFFICIAL_PARAMS))
def test_official_parameter_counts(variant):
  model = DiT(**variant_kwargs(variant))  # official defaults: 32x32x4 latents, 1000 classes
  pos_table = model.num_tokens * model.hidden_size
  assert num_params(model) + pos_table == OFFICIAL_PARAMS[variant]


def test_adaln_zero_is_identity_at_init():
  model = DiT(**TINY)
  variables = _init(model)
  x, t, y = _inputs(model)
  np.testing.assert_array_equal(_apply(model, variables, x, t, y), 0.0)  # zero final layer
  block = DiTBlock(num_heads=4, mlp_ratio=4.0, block_type="adaln_zero", attention_impl="xla",
                   dtype=jnp.float32, param_dtype=jnp.float32)
  tokens = jax.random.normal(jax.random.key(2), (2, 16, 32))
  cond = jax.random.normal(jax.random.key(3), (2, 32))
  block_vars = jax.jit(block.init)(_key(4), tokens, cond)
  np.testing.assert_array_equal(jax.jit(block.apply)(block_vars, tokens, cond), tokens)


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("patch_size,num_classes", [(2, 7), (4, 13), (8, 1)])
def test_shapes(block_type, learn_sigma, patch_size, num_classes):
  model = DiT(**dict(TINY, input_size=16, patch_size=patch_size, num_classes=num_classes,
                     block_type=block_type, learn_sigma=learn_sigma))
  x, t, y = _inputs(model, batch=3)
  variables = jax.eval_shape(lambda: _init(model, batch=3))
  out = jax.eval_shape(lambda v: model.apply(v, x, t, y, train=True, rngs={"dropout": _key(0)}),
                       variables)
  assert out.shape == (3, 16, 16, 6 if learn_sigma else 3) and out.dtype == jnp.float32
  params = nn.unbox(variables["params"])
  assert params["y_embedder"]["embedding_table"].shape == (num_classes + 1, 32)
  assert params["final_layer"]["linear"]["kernel"].shape == (32, patch_size ** 2 * out.shape[-1])
  assert params["x_embedder"]["kernel"].shape == (patch_size, patch_size, 3, 32)


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_block_types_run(block_type):
  model = DiT(**dict(TINY, block_type=block_type))
  out = _apply(model, _random_variables(model), *_inputs(model))
  assert np.all(np.isfinite(out)) and np.abs(out).max() > 0


def test_position_table_closed_form():
  d, g = 16, 3
  table = layers.sincos_pos_embed_2d(d, g)
  assert table.shape == (g * g, d) and table.dtype == np.float64
  w = 10000.0 ** (-np.arange(d // 4) / (d // 4))
  for r in range(g):
    for c in range(g):
      want = np.concatenate([np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)])
      np.testing.assert_allclose(table[r * g + c], want, rtol=0, atol=1e-15)


def test_timestep_features_closed_form():
  t = np.array([0.0, 1.0, 999.0, 12.5])
  feats = np.asarray(layers.timestep_features(jnp.asarray(t)))
  f = np.exp(-math.log(10000.0) * np.arange(128) / 128)
  want = np.concatenate([np.cos(t[:, None] * f), np.sin(t[:, None] * f)], axis=1)
  assert feats.dtype == np.float32 and feats.shape == (4, 256)
  np.testing.assert_allclose(feats, want, atol=1e-4)  # float32 arguments up to 999


def test_label_dropout_uses_null_row():
  model = DiT(**dict(TINY, class_dropout_prob=1.0))
  variables = _random_variables(model)
  x, t, y = _inputs(model)
  dropped = _apply(model, variables, x, t, y, train=True, rngs={"dropout": _key(5)})
  null = _apply(model, variables, x, t, jnp.full_like(y, model.num_classes))
  np.testing.assert_allclose(dropped, null, atol=1e-6)
  no_cfg = DiT(**dict(TINY, class_dropout_prob=0.0))
  assert nn.unbox(jax.eval_shape(lambda: _init(no_cfg))["params"])["y_embedder"]["embedding_table"].shape[0] == 7


def test_variants_and_build_model():
  assert variant_kwargs("XL/2") == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
  with pytest.raises(ValueError, match="XL/3"):
    variant_kwargs("XL/3")
  model = build_model({"variant": "B/4", "depth": 3, "dtype": "bfloat16", "param_dtype": "float32"})
  assert (model.depth, model.hidden_size, model.patch_size) == (3, 768, 4)
  assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32
  with pytest.raises(ValueError, match="hidden_sise"):
    build_model({"hidden_sise": 3})
  with pytest.raises(ValueError, match="block_type"):
    jax.eval_shape(lambda: _init(DiT(**dict(TINY, block_type="film"))))


def test_bfloat16_compute_stays_close():
  model = DiT(**TINY)
  variables = _random_variables(model, scale=0.1)
  inputs = _inputs(model)
  ref = _apply(model, variables, *inputs)
  out = _apply(model.clone(dtype=jnp.bfloat16), variables, *inputs)
  assert out.dtype == jnp.float32
  assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def _stack_blocks(params, depth):
  blocks = [params.pop(f"blocks_{i}") for i in range(depth)]
  params["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
  return params


def test_scan_and_remat_match_unrolled():
  base = DiT(**TINY)
  params = _random_variables(base)["params"]
  inputs = _inputs(base)

  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, *inputs) ** 2)

  ref, ref_grad = jax.jit(jax.value_and_grad(lambda p: loss(base, p)))(params)
  scanned = base.clone(scan_blocks=True, remat_policy="dots_saveable")
  stacked = _stack_blocks(dict(params), base.depth)
  scan_abstract = nn.unbox(jax.eval_shape(lambda: _init(scanned))["params"])
  assert jax.tree.map(lambda a: a.shape, stacked) == jax.tree.map(lambda a: a.shape, scan_abstract)
  value, grad = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grad, _stack_blocks(dict(ref_grad), base.depth))


def _spec(shardings, *path):
  for name in path:
    shardings = shardings[name]
  return tuple(shardings.spec)


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_2x2x2_follows_rules(devices, scan):
  model = DiT(**dict(TINY, scan_blocks=scan))
  mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  with sharding.mesh_context(mesh):
    params = sharding.logical_to_shardings(jax.eval_shape(lambda: _init(model)), mesh)["params"]
  block = ("blocks",) if scan else ("blocks_0",)
  lead = (None,) if scan else ()  # scanned params carry a leading (replicated) layer axis
  assert _spec(params, *block, "mlp", "fc1", "kernel") == lead + ("fsdp", "tensor")
  assert _spec(params, *block, "mlp", "fc2", "kernel") == lead + ("tensor", "fsdp")
  assert _spec(params, *block, "attn", "qkv", "kernel") == lead + ("fsdp", None, "tensor", None)
  assert _spec(params, *block, "attn", "proj", "kernel") == lead + ("tensor", None, "fsdp")
  assert _spec(params, *block, "adaLN_modulation", "kernel") == lead + ("fsdp", "tensor")
  assert _spec(params, "y_embedder", "embedding_table") == (None, "fsdp")


def test_sharded_2x2x2_init_and_output_match_one_device(devices):
  model = DiT(**dict(TINY, block_type="adaln"))  # standard init: a non-zero output to compare
  mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  x, t, y = _inputs(model, batch=8)
  init = lambda: model.init(_key(0), x, t, y)
  with sharding.mesh_context(mesh):
    shardings = sharding.logical_to_shardings(jax.eval_shape(init), mesh)
    variables = jax.jit(init, out_shardings=shardings)()
    batch = sharding.batch_sharding(mesh)
    out = _apply(model, variables, *(jax.device_put(a, batch) for a in (x, t, y)))
  leaf = variables["params"]["blocks_0"]["mlp"]["fc1"]["kernel"].value
  assert leaf.sharding.shard_shape(leaf.shape) == (16, 64)  # (32 / fsdp, 128 / tensor)
  single = _apply(model, jax.device_get(variables), x, t, y)
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-5)
  assert np.abs(single).max() > 0
