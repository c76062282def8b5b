"""The DiT family on video (issue 15): spacetime patches, both attention layouts, sharded tokens.

References are independent of the code under test:
- F = 1, pt = 1 is the image model: same parameters, bit-identical output (every block design).
- The spacetime table against its closed form (sin/cos of frame and grid positions).
- Tubelet embedding against an explicit numpy patch extraction and matmul; unpatchify against
  numpy's reshape of the documented (pt, p, p, C) feature layout.
- Spatial / temporal blocks equal the joint block applied to each frame / each patch position's
  frames separately (same parameters): attention is grouped and nothing else changes; with
  RoPE too, whose rotations within a group depend on offsets inside it only.
- Gflops against the closed-form per-block terms of the paper's convention.
- The training step with tokens sharded over 4 devices (mesh data=2, sequence=4) and with
  parameters over fsdp equals the one-device step (loss, gradient norm, updated parameters).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dit_jax import config_checks, flops, sharding
from dit_jax import train_state as ts
from dit_jax.models import layers
from dit_jax.models.blocks import BLOCK_TYPES, DiTBlock
from dit_jax.models.dit import DiT, init_inputs, unpatchify

TINY = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4,
            num_classes=5)


def _random_variables(model, seed=0, scale=0.2):
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (scale * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


def _apply(model, variables, *args):
  return jax.jit(lambda v, a: model.apply(v, *a))(variables, args)


def _inputs(model, batch=3, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
  return x, rng.integers(0, 1000, batch), rng.integers(0, model.num_classes, batch)


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_one_frame_video_is_the_image_model(block_type):
  image = DiT(**TINY, block_type=block_type)
  video = image.clone(num_frames=1)
  variables = _random_variables(image)
  assert jax.tree.structure(variables) == jax.tree.structure(_random_variables(video))
  x, t, y = _inputs(image)
  out_image = _apply(image, variables, x, t, y)
  out_video = _apply(video, variables, x[:, None], t, y)
  assert out_video.shape == (3, 1, 8, 8, 2)
  np.testing.assert_array_equal(np.asarray(out_video[:, 0]), np.asarray(out_image))


def test_spacetime_table_closed_form():
  d, frames, grid = 8, 3, 2
  table = layers.sincos_pos_embed_3d(d, frames, grid)
  assert table.shape == (frames * grid * grid, d)
  np.testing.assert_array_equal(layers.sincos_pos_embed_3d(d, 1, grid),
                                layers.sincos_pos_embed_2d(d, grid))
  for t in range(frames):
    for r in range(grid):
      for c in range(grid):
        k = (t * grid + r) * grid + c
        w2 = 10000.0 ** (-np.arange(2) / 2)  # D/4 = 2 frequencies per spatial axis
        spatial = np.concatenate([np.sin(c * w2), np.cos(c * w2), np.sin(r * w2), np.cos(r * w2)])
        w1 = 10000.0 ** (-np.arange(4) / 4)  # D/2 = 4 frequencies for time
        temporal = np.concatenate([np.sin(t * w1), np.cos(t * w1)])
        np.testing.assert_allclose(table[k], spatial + temporal, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pt", [1, 2])
def test_tubelet_embedding_and_unpatchify_follow_the_layout(pt):
  p, frames, size, c, d = 2, 4, 4, 3, 5
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, frames, size, size, c)).astype(np.float32)
  embed = layers.PatchEmbed(p, d, temporal_patch_size=pt)
  variables = embed.init(jax.random.key(0), x)
  kernel = np.asarray(nn.unbox(variables)["params"]["kernel"])
  assert kernel.shape == ((pt,) if pt > 1 else ()) + (p, p, c, d)
  tokens = np.asarray(embed.apply(variables, x))
  # numpy reference: tubelets in frame-major (t, row, col) order, features (pt, p, p, C).
  g, gt = size // p, frames // pt
  patches = x.reshape(2, gt, pt, g, p, g, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  patches = patches.reshape(2, gt * g * g, pt * p * p * c)
  want = patches @ kernel.reshape(pt * p * p * c, d)
  np.testing.assert_allclose(tokens, want, rtol=1e-5, atol=1e-5)
  # unpatchify is the inverse of that patch layout.
  back = np.asarray(unpatchify(jnp.asarray(patches), p, c, frames, pt))
  np.testing.assert_array_equal(back, x)


def _block_pair(axis, frames, per_frame, rope):
  """The grouped block and the joint block that, applied to one group, should give its output.
  With RoPE the grouped block rotates over the whole (frames, 1, per_frame) grid and the joint
  one over the group's own grid: a frame's row of tokens, or one position's frames."""
  kw = dict(num_heads=4, mlp_ratio=2.0, block_type="adaln", attention_impl="xla",
            dtype=jnp.float32, param_dtype=jnp.float32)
  group_grid = (1, 1, per_frame) if axis == "spatial" else (frames, 1, 1)
  return (DiTBlock(attention_axis=axis, frames=frames,
                   rope_grid=(frames, 1, per_frame) if rope else (), **kw),
          DiTBlock(rope_grid=group_grid if rope else (), **kw))


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_grouped_block_is_the_joint_block_per_group(axis, rope):
  frames, per_frame, d = 3, 4, 32
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, frames * per_frame, d)).astype(np.float32)
  cond = rng.standard_normal((2, d)).astype(np.float32)
  grouped, joint = _block_pair(axis, frames, per_frame, rope)
  variables = _random_variables_of(grouped, x, cond)
  out = np.asarray(grouped.apply(variables, x, cond))
  xs = x.reshape(2, frames, per_frame, d)
  if axis == "spatial":  # each frame alone
    want = np.stack([joint.apply(variables, xs[:, i], cond) for i in range(frames)], 1)
  else:  # each patch position's frames alone
    want = np.stack([joint.apply(variables, xs[:, :, j], cond) for j in range(per_frame)], 2)
  np.testing.assert_allclose(out, want.reshape(out.shape), rtol=1e-5, atol=1e-5)
  # and not the joint block over everything
  assert np.abs(out - np.asarray(joint.apply(variables, x, cond))).max() > 1e-3


def _random_variables_of(module, *args):
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), nn.unbox(abstract))


def _stack(params, names):
  return jax.tree.map(lambda *a: jnp.stack(a), *[params.pop(n) for n in names])


@pytest.mark.parametrize("layout", ["joint", "factorized"])
def test_scan_and_remat_match_unrolled_for_video(layout):
  base = DiT(**dict(TINY, depth=4), num_frames=4, temporal_patch_size=2, attention_layout=layout)
  params = _random_variables(base)["params"]
  x, t, y = _inputs(base)
  loss = lambda m, p: jnp.mean(m.apply({"params": p}, x, t, y) ** 2)
  ref, ref_grad = jax.jit(jax.value_and_grad(lambda p: loss(base, p)))(params)
  units = 2 if layout == "factorized" else 4
  assert sorted(k for k in params if k.startswith("blocks")) == [f"blocks_{i}" for i in range(units)]
  if layout == "factorized":
    assert set(params["blocks_0"]) == {"spatial", "temporal"}
  scanned = base.clone(scan_blocks=True, remat_policy="full")
  stacked = dict(params, blocks=_stack(dict(params), [f"blocks_{i}" for i in range(units)]))
  stacked = {k: v for k, v in stacked.items() if not k.startswith("blocks_")}
  value, grad = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  want = dict(ref_grad, blocks=_stack(dict(ref_grad), [f"blocks_{i}" for i in range(units)]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grad, {k: v for k, v in want.items() if not k.startswith("blocks_")})


def test_gflops_closed_form_for_video():
  kw = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16)
  image = DiT(**kw)
  assert flops.dit_gflops(image.clone(num_frames=1)) == flops.dit_gflops(image)
  frames, pt, d, r = 16, 2, 1152, 4.0
  tokens, per_frame, temporal = (frames // pt) * 256, 256, frames // pt
  linear = (4 + 2 * r) * tokens * d * d + 3 * tokens * d + 6 * d * d
  embed = tokens * pt * 4 * 4 * d + tokens * d * pt * 4 * 8
  joint = 28 * (linear + 2 * tokens * tokens * d) + embed
  factorized = 14 * (2 * linear + 2 * tokens * per_frame * d + 2 * tokens * temporal * d) + embed
  video = image.clone(num_frames=frames, temporal_patch_size=pt)
  assert flops.dit_gflops(video) == pytest.approx(joint / 1e9, rel=1e-12)
  assert flops.dit_gflops(video.clone(attention_layout="factorized")) == pytest.approx(
      factorized / 1e9, rel=1e-12)


@pytest.mark.parametrize("fields, message", [
    (dict(num_frames=6, temporal_patch_size=4), "num_frames=6 is not divisible by temporal_patch_size=4"),
    (dict(num_frames=0, temporal_patch_size=2), "temporal_patch_size=2 must be 1 for images"),
    (dict(num_frames=4, attention_layout="factorized", depth=3), "depth=3 must be even"),
    (dict(num_frames=4, attention_layout="factorized", block_type="in_context"), "in_context"),
    (dict(num_frames=4, attention_layout="diagonal"), "attention_layout='diagonal' must be one of"),
    (dict(pos_embed="learned"), "pos_embed='learned' must be one of"),
    (dict(pos_embed="rope", num_heads=8), "head width hidden_size / num_heads = 4 must be even and "
                                          "at least 6"),
])
def test_bad_video_fields_are_refused_before_compiling(fields, message):
  from configs import moving_digits  # pylint: disable=import-outside-toplevel
  config = moving_digits.get_config("smoke")
  config.model.update(fields)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(config, num_devices=1, check_data=False)
  with pytest.raises(ValueError, match=message):  # the model says the same when built directly
    model = ts.build_model(config)
    model.init(jax.random.key(0), *init_inputs(model))


def _one_step(config, mesh, batch):
  state = ts.init_train_state(config, mesh, jax.random.key(0))
  shardings = jax.tree.map(lambda a: a.sharding, state)
  step = ts.jit_train_step(config, mesh, shardings)
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  new_state, metrics = step(state, batch, jax.random.key(1))
  return jax.device_get(new_state.params), jax.device_get(metrics)


# Each layout and each kind of position (the sin-cos table, rotary) once.
@pytest.mark.parametrize("layout, pos_embed", [("joint", "rope"), ("factorized", "sincos+rope")])
def test_tokens_sharded_over_devices_train_like_one_device(devices, layout, pos_embed):
  from configs import moving_digits  # pylint: disable=import-outside-toplevel
  config = moving_digits.get_config("smoke")
  config.model.update(attention_layout=layout, pos_embed=pos_embed)
  config.global_batch_size = 4
  rng = np.random.default_rng(0)
  shape = (4,) + ts.build_model(config).input_shape
  batch = dict(x=rng.uniform(-1, 1, shape).astype(np.float32), y=np.arange(4, dtype=np.int32))
  one = sharding.create_mesh(dict(data=1), devices[:1])
  want_params, want = _one_step(config, one, batch)
  mesh = sharding.create_mesh(dict(data=2, sequence=2, fsdp=2), devices)
  with sharding.mesh_context(mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES):
    spec = nn.logical_to_mesh_axes(layers.TOKENS)
  assert tuple(spec) == (("data", "fsdp"), "sequence", None)  # the token axis is split
  got_params, got = _one_step(config, mesh, batch)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_params, want_params)
