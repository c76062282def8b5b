"""Non-square inputs for the DiT family (H = input_size, W = input_width; 0 = square).

References are independent of the code under test:
- The rectangular position table against its closed form (sin/cos of the column, then of the
  row, per element, row-major tokens) and against the official numpy code written out on a
  (grid_h, grid_w) grid; the square table is the official one bit for bit.
- input_width == input_size is the square model (input_width = 0) bit for bit.
- Patch embedding and unpatchify of an 8 x 16 grid against numpy reshapes and a matmul.
- Tokens land on the right pixels: with a zero patch embedding and identity blocks (adaLN-Zero
  at init) the 8 x 16 model's output is LayerNorm(table row of (t, r, c)) @ W + b placed on the
  pixels of patch (r, c), the table row from the closed form (images and videos).
- Gflops against the paper-convention closed form with T = H/p * W/p tokens.
- Bad widths are refused naming config.model.input_width; the digit-pairs data shape needs it.
- Text-conditioned (cross-attention, MM-DiT) and video (joint, factorized) 8 x 16 models run.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dit_jax import config_checks, flops
from dit_jax.models import layers
from dit_jax.models.dit import DiT, init_inputs, model_kwargs_for_init, unpatchify

# The digit-pairs canvas: 8 rows x 16 columns, one channel.
PAIRS = dict(input_size=8, input_width=16, patch_size=2, in_channels=1, hidden_size=32, depth=2,
             num_heads=4, num_classes=10)


def _key(seed):
  return jax.random.key(seed, impl="rbg")  # compiles faster on CPU than threefry


def _abstract(model):
  return jax.eval_shape(lambda: model.init(_key(0), *init_inputs(model),
                                           **model_kwargs_for_init(model)))


def _random_variables(model, seed=0, scale=0.2):
  """N(0, scale^2) values for every parameter (gates and modulations non-zero)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (scale * rng.standard_normal(a.shape)).astype(a.dtype),
                      nn.unbox(_abstract(model)))


def _apply(model, variables, *args, **kwargs):
  return np.asarray(jax.jit(lambda v, a, k: model.apply(v, *a, **k))(variables, args, kwargs))


def _inputs(model, batch=3, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
  return x, rng.integers(0, 1000, batch), rng.integers(0, model.num_classes, batch)


def _closed_form_row(d, r, c, t=None):
  """Table row of token (frame t, row r, column c): [sin cw, cos cw, sin rw, cos rw]
  (w_j = 10000^(-j / (d/4))), plus [sin tv, cos tv] (v_j = 10000^(-j / (d/2))) for frames."""
  w = 10000.0 ** (-np.arange(d // 4) / (d // 4))
  row = np.concatenate([np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)])
  if t is not None:
    v = 10000.0 ** (-np.arange(d // 2) / (d // 2))
    row = row + np.concatenate([np.sin(t * v), np.cos(t * v)])
  return row


def _official_table(d, grid_h, grid_w):
  """The official get_2d_sincos_pos_embed (DiT / MAE numpy code) on a (grid_h, grid_w) grid."""
  def one_d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.
    omega = 1. / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
  return np.concatenate([one_d(d // 2, grid[0]), one_d(d // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid", [(2, 3), (3, 2), (4, 8)])
def test_rectangular_table_closed_form(grid):
  d, (gh, gw) = 16, grid
  table = layers.sincos_pos_embed_2d(d, grid)
  assert table.shape == (gh * gw, d) and table.dtype == np.float64
  for r in range(gh):
    for c in range(gw):
      np.testing.assert_allclose(table[r * gw + c], _closed_form_row(d, r, c), rtol=0, atol=1e-15)
  np.testing.assert_allclose(table, _official_table(d, gh, gw), rtol=0, atol=1e-15)
  frames = 3
  video = layers.sincos_pos_embed_3d(d, frames, grid)
  for t in range(frames):
    for r in range(gh):
      for c in range(gw):
        np.testing.assert_allclose(video[(t * gh + r) * gw + c], _closed_form_row(d, r, c, t),
                                   rtol=1e-12, atol=1e-12)


def test_square_table_is_the_official_one_bit_for_bit():
  for d, g in ((16, 3), (1152, 16)):
    np.testing.assert_array_equal(layers.sincos_pos_embed_2d(d, g), _official_table(d, g, g))
    np.testing.assert_array_equal(layers.sincos_pos_embed_2d(d, (g, g)), _official_table(d, g, g))


@pytest.mark.parametrize("extra", [dict(block_type="adaln_zero"), dict(block_type="in_context"),
                                   dict(num_frames=2, attention_layout="factorized")])
def test_width_equal_to_height_is_the_square_model(extra):
  square = DiT(**dict(PAIRS, input_width=0, **extra))
  explicit = square.clone(input_width=PAIRS["input_size"])
  assert explicit.input_shape == square.input_shape and explicit.num_tokens == square.num_tokens
  variables = _random_variables(square)
  assert jax.tree.structure(variables) == jax.tree.structure(_random_variables(explicit))
  args = _inputs(square)
  np.testing.assert_array_equal(_apply(explicit, variables, *args), _apply(square, variables, *args))


@pytest.mark.parametrize("pt", [1, 2])
def test_patch_embedding_and_unpatchify_of_a_rectangular_grid(pt):
  p, h, w, c, d = 2, 8, 16, 3, 5
  frames = 2 * pt
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, frames, h, w, c)).astype(np.float32)
  embed = layers.PatchEmbed(p, d, temporal_patch_size=pt)
  variables = embed.init(jax.random.key(0), x)
  kernel = np.asarray(nn.unbox(variables)["params"]["kernel"]).reshape(pt * p * p * c, d)
  # numpy reference: frame-major, row-major tubelets over an (h/p) x (w/p) grid.
  gt, gh, gw = frames // pt, h // p, w // p
  patches = x.reshape(2, gt, pt, gh, p, gw, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  patches = patches.reshape(2, gt * gh * gw, pt * p * p * c)
  np.testing.assert_allclose(np.asarray(embed.apply(variables, x)), patches @ kernel,
                             rtol=1e-5, atol=1e-5)
  back = unpatchify(jnp.asarray(patches), p, c, frames, pt, grid=(gh, gw))
  np.testing.assert_array_equal(np.asarray(back), x)
  if pt == 1:  # images: tokens of x[:, 0] alone
    image = x[:, 0]
    patches = image.reshape(2, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(2, -1, p * p * c)
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(patches), p, c,
                                                        grid=(gh, gw))), image)


@pytest.mark.parametrize("frames", [0, 2])
def test_tokens_land_on_their_pixels(frames):
  """Zero patch embedding -> token k is the table row of its (t, r, c); adaLN-Zero blocks at init
  are the identity; the final layer (shift = scale = 0) maps it to LN(row) @ W + b, which must
  appear on the pixels of patch (r, c) of frame t."""
  model = DiT(**dict(PAIRS, num_frames=frames))
  p, d, out_c = model.patch_size, model.hidden_size, model.out_channels
  variables = nn.unbox(jax.jit(lambda: model.init(_key(0), *init_inputs(model)))())
  params = jax.tree.map(np.asarray, variables["params"])
  rng = np.random.default_rng(3)
  params["x_embedder"] = jax.tree.map(np.zeros_like, params["x_embedder"])
  final = params["final_layer"]
  assert not final["adaLN_modulation"]["kernel"].any() and not final["adaLN_modulation"]["bias"].any()
  final["linear"]["kernel"] = rng.standard_normal((d, p * p * out_c)).astype(np.float32)
  final["linear"]["bias"] = rng.standard_normal(p * p * out_c).astype(np.float32)
  x, t, y = _inputs(model, batch=2)
  out = _apply(model, {"params": params}, x, t, y)
  rows, cols = 8 // p, 16 // p
  assert out.shape == (2,) + ((frames,) if frames else ()) + (8, 16, out_c)
  for f in range(max(frames, 1)):
    for r in range(rows):
      for c in range(cols):
        e = _closed_form_row(d, r, c, f if frames else None)
        e = (e - e.mean()) / np.sqrt(e.var() + 1e-6)
        want = (e @ final["linear"]["kernel"] + final["linear"]["bias"]).reshape(p, p, out_c)
        got = out[:, f] if frames else out
        got = got[:, r * p:(r + 1) * p, c * p:(c + 1) * p]
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-4, atol=1e-4)


def test_gflops_closed_form_counts_the_rectangular_grid():
  d, depth, r, p = 1152, 28, 4.0, 2
  square = DiT(input_size=32, patch_size=p, in_channels=4, hidden_size=d, depth=depth, num_heads=16)
  wide = square.clone(input_width=64)

  def closed_form(tokens):
    block = (4 + 2 * r) * tokens * d * d + 2 * tokens * tokens * d + 3 * tokens * d + 6 * d * d
    return (depth * block + tokens * p * p * 4 * d + tokens * d * p * p * 8) / 1e9

  assert (square.num_tokens, wide.num_tokens) == (256, 512)
  assert flops.dit_gflops(square) == pytest.approx(118.64, abs=5e-3)  # the paper's XL/2 at 256
  assert flops.dit_gflops(wide) == pytest.approx(closed_form(32 * 64 // p ** 2), rel=1e-12)
  pairs, digits = DiT(**PAIRS), DiT(**dict(PAIRS, input_width=0))
  assert pairs.num_tokens == 2 * digits.num_tokens == 32
  for model, tokens in ((pairs, 32), (digits, 16)):
    e = model.hidden_size  # 32, depth 2, one channel in, two out
    block = (4 + 2 * r) * tokens * e * e + 2 * tokens * tokens * e + 3 * tokens * e + 6 * e * e
    want = (2 * block + tokens * p * p * 1 * e + tokens * e * p * p * 2) / 1e9
    assert flops.dit_gflops(model) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("width", [7, -2])
def test_bad_widths_are_refused(width):
  model = DiT(**dict(PAIRS, input_width=width))
  with pytest.raises(ValueError, match=f"input_width={width} must be 0"):
    model.init(_key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
  from configs import digits  # pylint: disable=import-outside-toplevel
  config = digits.get_config("smoke")
  config.model.input_width = width
  with pytest.raises(config_checks.ConfigError, match=f"config.model.input_width={width}"):
    config_checks.validate(config, num_devices=8, check_data=False)


def test_the_digit_pairs_shape_needs_input_width():
  from configs import digits  # pylint: disable=import-outside-toplevel
  config = digits.get_config("smoke")
  config.data.source = "digit_pairs"
  with pytest.raises(config_checks.ConfigError, match=r"\(8, 16, 1\).*\(8, 8, 1\).*input_width"):
    config_checks.validate(config, num_devices=8)
  config.model.input_width = 16
  config_checks.validate(config, num_devices=8)
  model = DiT(**PAIRS)
  with pytest.raises(ValueError, match=r"does not match \(B, \(8, 16, 1\)\)"):
    model.init(_key(0), jnp.zeros((1, 16, 8, 1)), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))


@pytest.mark.parametrize("extra", [
    dict(block_type="cross_attention", context_dim=12, context_length=6, num_classes=1),
    dict(block_type="mmdit", context_dim=12, context_length=6, num_classes=1),
    dict(num_frames=4, temporal_patch_size=2),
    dict(num_frames=4, attention_layout="factorized"),
])
def test_text_and_video_models_run_on_the_canvas(extra):
  model = DiT(**dict(PAIRS, **extra))
  x, t, y = _inputs(model)
  kwargs = {}
  if model.context_dim:
    rng = np.random.default_rng(2)
    kwargs = dict(context=rng.standard_normal((3, 6, 12)).astype(np.float32),
                  context_mask=np.arange(6)[None] < np.array([[6], [3], [1]]))
  out = _apply(model, _random_variables(model), x, t, y, **kwargs)
  assert out.shape == x.shape[:-1] + (2,)
  assert np.all(np.isfinite(out)) and np.abs(out).std() > 0
