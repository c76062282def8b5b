"""Text-conditioned DiT (issue 16): PixArt-alpha cross-attention and SD3 MM-DiT blocks.

References are independent of the code under test:
- One block of each design against a float64 numpy re-implementation from the papers'
  definitions (adaLN-Zero modulation, LayerNorm, per-head QK RMSNorm, softmax attention whose
  padded keys are left out, tanh-GELU MLP), on random parameters and a padded caption.
- Padding: changing padded caption values changes nothing (bit-exact), and the same captions
  with the padding cut off (a shorter L) give the same output to 1e-5.
- Null text: y = num_classes gives one output whatever the caption, the one of the spec's
  definition (the null vector at position 0, mask [True, False, ...]), and not the y = 0 one;
  guidance equals uncond + s (cond - uncond) from separate calls.
- Caption dropout: the fraction of training examples that get the null text is
  class_dropout_prob within 4 binomial standard deviations.
- adaLN-Zero identity at init (blocks return their inputs, the model returns 0), scan / remat
  == unrolled (values and gradients), Gflops against closed forms and XLA's cost analysis,
  sharded on a (data 2, fsdp 2, tensor 2) mesh == one device, and errors naming the field.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dit_jax import sharding
from dit_jax.flops import dit_gflops
from dit_jax.models.blocks import DiTBlock, MMDiTBlock
from dit_jax.models.dit import DiT, init_inputs, model_kwargs_for_init

E, L = 12, 6  # text-encoder width, padded caption length
TINY = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4,
            num_classes=1, context_dim=E, context_length=L)
VIDEO = dict(num_frames=2, input_size=4)
DESIGNS = {
    "cross_attention": dict(block_type="cross_attention"),
    "mmdit": dict(block_type="mmdit"),
    "cross_attention_video_factorized": dict(block_type="cross_attention",
                                             attention_layout="factorized", **VIDEO),
    "mmdit_video": dict(block_type="mmdit", **VIDEO),
}


def _key(seed):
  return jax.random.key(seed, impl="rbg")  # compiles faster on CPU than threefry


def _model(design, **kw):
  return DiT(**{**TINY, **DESIGNS[design], **kw})


def _abstract(model):
  return jax.eval_shape(lambda: model.init(_key(0), *init_inputs(model),
                                           **model_kwargs_for_init(model)))


def _random_variables(model, seed=0, scale=0.2):
  """N(0, scale^2) values for every parameter: modulations and gates non-zero."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (scale * rng.standard_normal(a.shape)).astype(a.dtype),
                      nn.unbox(_abstract(model)))


def _apply(model, variables, *args, **kwargs):
  return jax.jit(lambda v, a, k: model.apply(v, *a, **k))(variables, args, kwargs)


def _inputs(model, lengths, length=L, seed=1):
  """x, t, y = 0 and a caption (B, length, E) whose rows have ``lengths`` real tokens."""
  rng = np.random.default_rng(seed)
  batch = len(lengths)
  x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
  t = rng.integers(0, 1000, batch)
  context = rng.standard_normal((batch, length, E)).astype(np.float32)
  mask = np.arange(length)[None] < np.asarray(lengths)[:, None]
  return x, t, np.zeros(batch, np.int32), context, mask


# --- numpy references (float64) -----------------------------------------------------------

def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _dense(x, p, n_in=1):
  return np.tensordot(x, p["kernel"], axes=n_in) + p["bias"]


def _ln(x, p=None):
  mu = x.mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
  return y if p is None else y * p["scale"] + p["bias"]


def _silu(x):
  return x / (1 + np.exp(-x))


def _mlp(x, p):
  h = _dense(x, p["fc1"])
  h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
  return _dense(h, p["fc2"])


def _attention(q, k, v, lengths=None):
  """(B, T, H, hd) softmax attention; row b sees keys [0, lengths[b])."""
  logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
  if lengths is not None:
    keep = np.arange(k.shape[1])[None] < np.asarray(lengths)[:, None]
    logits = np.where(keep[:, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", w, v)


def _modulation(p, c):
  shift, scale, gate, shift2, scale2, gate2 = np.split(_dense(_silu(c), p), 6, axis=-1)
  return (shift[:, None], scale[:, None], gate[:, None], shift2[:, None], scale2[:, None],
          gate2[:, None])


def _rms(x, scale):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * scale


def _mmdit_reference(p, x, ctx, c, lengths):
  streams = [(p["x_block"], x), (p["context_block"], ctx)]
  qkv, mods = [], []
  for ps, s in streams:
    mod = _modulation(ps["adaLN_modulation"], c)
    h = _dense(_ln(s) * (1 + mod[1]) + mod[0], ps["qkv"])
    qkv.append((_rms(h[:, :, 0], ps["q_norm"]["scale"]), _rms(h[:, :, 1], ps["k_norm"]["scale"]),
                h[:, :, 2]))
    mods.append(mod)
  q, k, v = (np.concatenate([a, b], axis=1) for a, b in zip(*qkv))
  out = _attention(q, k, v, x.shape[1] + np.asarray(lengths))
  outs = []
  for (ps, s), mod, o in zip(streams, mods, (out[:, :x.shape[1]], out[:, x.shape[1]:])):
    s = s + mod[2] * _dense(o, ps["proj"], 2)
    outs.append(s + mod[5] * _mlp(_ln(s) * (1 + mod[4]) + mod[3], ps["mlp"]))
  return outs


def _cross_attention_reference(p, x, ctx, c, lengths):
  mod = _modulation(p["adaLN_modulation"], c)
  h = _dense(_ln(x) * (1 + mod[1]) + mod[0], p["attn"]["qkv"])
  x = x + mod[2] * _dense(_attention(h[:, :, 0], h[:, :, 1], h[:, :, 2]), p["attn"]["proj"], 2)
  pc = p["cross_attn"]
  q = _dense(_ln(x, p["norm_cross"]), pc["q"])
  kv = _dense(ctx, pc["kv"])
  x = x + _dense(_attention(q, kv[:, :, 0], kv[:, :, 1], lengths), pc["proj"], 2)
  return x + mod[5] * _mlp(_ln(x) * (1 + mod[4]) + mod[3], p["mlp"])


BLOCK_KW = dict(num_heads=2, mlp_ratio=2.0, block_type="cross_attention", attention_impl="xla",
                dtype=jnp.float32, param_dtype=jnp.float32)


def _block_inputs(seed=3, batch=2, tokens=4, text=5, width=8):
  rng = np.random.default_rng(seed)
  x, ctx = (rng.standard_normal((batch, n, width)).astype(np.float32) for n in (tokens, text))
  return x, ctx, rng.standard_normal((batch, width)).astype(np.float32), np.array([2, 5], np.int32)


@pytest.mark.parametrize("design", ["cross_attention", "mmdit"])
def test_block_matches_numpy_reference(design):
  x, ctx, c, lengths = _block_inputs()
  if design == "mmdit":
    block, args = MMDiTBlock(**BLOCK_KW), ((x, ctx), c, lengths)
  else:
    block, args = DiTBlock(**BLOCK_KW), (x, c, ctx, lengths)
  abstract = nn.unbox(jax.eval_shape(lambda: block.init(_key(0), *args)))
  rng = np.random.default_rng(4)
  variables = jax.tree.map(lambda a: (0.4 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)
  out = jax.jit(block.apply)(variables, *args)
  p = _np(variables["params"])
  ref_args = [np.asarray(a, np.float64) for a in (x, ctx, c)] + [lengths]
  if design == "mmdit":
    refs, before = _mmdit_reference(p, *ref_args), (x, ctx)
  else:
    refs, before, out = [_cross_attention_reference(p, *ref_args)], (x,), [out]
  for got, want, start in zip(out, refs, before):
    assert np.abs(want - start).max() > 0.1  # the block changes its stream
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("design", ["cross_attention", "mmdit"])
def test_identity_at_init(design):
  x, ctx, c, lengths = _block_inputs()
  if design == "mmdit":
    block, args = MMDiTBlock(**BLOCK_KW), ((x, ctx), c, lengths)
  else:
    block, args = DiTBlock(**BLOCK_KW), (x, c, ctx, lengths)
  out = jax.jit(lambda: block.apply(block.init(_key(0), *args), *args))()
  jax.tree.map(np.testing.assert_array_equal, out, args[0])
  model = _model(design)
  inputs = _inputs(model, [2, 6])
  out = jax.jit(lambda: model.apply(model.init(_key(0), *inputs[:3], context=inputs[3],
                                               context_mask=inputs[4]),
                                    *inputs[:3], context=inputs[3], context_mask=inputs[4]))()
  np.testing.assert_array_equal(out, 0.0)  # the adaLN-Zero final layer


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_shapes_and_parameters(design):
  model = _model(design)
  x, t, y, context, mask = _inputs(model, [1, 3, 6])
  variables = _abstract(model)
  out = jax.eval_shape(lambda v: model.apply(v, x, t, y, train=True, context=context,
                                             context_mask=mask, rngs={"dropout": _key(0)}),
                       variables)
  assert out.shape == (3,) + model.input_shape[:-1] + (2,) and out.dtype == jnp.float32
  params = nn.unbox(variables["params"])
  assert params["null_context"].shape == (E,)
  assert params["context_embedder"]["fc1"]["kernel"].shape == (E, 32)
  assert params["context_embedder"]["fc2"]["kernel"].shape == (32, 32)
  assert params["y_embedder"]["embedding_table"].shape == (2, 32)  # caption, null
  block = params["blocks_0"]
  if model.block_type == "mmdit":
    for stream in ("x_block", "context_block"):
      assert block[stream]["qkv"]["kernel"].shape == (32, 3, 4, 8)
      assert block[stream]["q_norm"]["scale"].shape == (8,)
      assert block[stream]["adaLN_modulation"]["kernel"].shape == (32, 6 * 32)
  else:
    block = block.get("spatial", block)
    assert block["cross_attn"]["kv"]["kernel"].shape == (32, 2, 4, 8)
    assert block["adaLN_modulation"]["kernel"].shape == (32, 6 * 32)
  # Another caption length than context_length works with the same parameters.
  longer = _inputs(model, [9, 2], length=9)
  assert jax.eval_shape(lambda v: model.apply(v, *longer[:3], context=longer[3],
                                              context_mask=longer[4]), variables).shape[0] == 2


@pytest.mark.parametrize("design", ["cross_attention", "mmdit", "cross_attention_video_factorized"])
def test_padding_has_no_effect(design):
  model = _model(design)
  variables = _random_variables(model)
  x, t, y, context, mask = _inputs(model, [3, 3, 0, 6])
  out = _apply(model, variables, x, t, y, context=context, context_mask=mask)
  changed = np.where(mask[..., None], context, 1e3 * np.random.default_rng(7).standard_normal(context.shape))
  np.testing.assert_array_equal(
      _apply(model, variables, x, t, y, context=changed.astype(np.float32), context_mask=mask), out)
  # The first two rows with their padding cut off: L = 3 real tokens, no mask.
  short = _apply(model, variables, x[:2], t[:2], y[:2], context=context[:2, :3])
  np.testing.assert_allclose(np.asarray(short), np.asarray(out[:2]), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out[0] - out[3])).max() > 1e-3  # the caption is read


@pytest.mark.parametrize("design", ["cross_attention", "mmdit"])
def test_null_text(design):
  model = _model(design)
  variables = _random_variables(model)
  x, t, y, context, mask = _inputs(model, [4, 6, 4, 6])
  x, t = np.repeat(x[:1], 4, 0), np.repeat(t[:1], 4, 0)  # one image, four captions/labels
  y = np.array([1, 1, 0, 1], np.int32)
  out = np.asarray(_apply(model, variables, x, t, y, context=context, context_mask=mask))
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # null: the caption does not matter
  np.testing.assert_allclose(out[0], out[3], atol=1e-6)
  assert np.abs(out[0] - out[2]).max() > 1e-3  # y = 0 reads its caption
  # The spec's null text: the learned null vector at position 0, mask [True, False, ...].
  null = np.zeros_like(context)
  null[:, 0] = np.asarray(variables["params"]["null_context"])
  null_mask = np.arange(L)[None].repeat(4, 0) == 0
  spec = np.asarray(_apply(model, variables, x, t, y, context=null, context_mask=null_mask))
  np.testing.assert_allclose(out[[0, 1, 3]], spec[[0, 1, 3]], atol=1e-6)
  # Guidance: [caption half; null half] equals uncond + s (cond - uncond) of the plain calls.
  pair = dict(context=np.concatenate([context[2:3]] * 2), context_mask=np.concatenate([mask[2:3]] * 2))
  guided = jax.jit(lambda v: model.apply(v, x[:2], t[:2], np.array([0, 1]), 4.0, None,
                                         method=model.forward_with_cfg, **pair))(variables)
  want = out[1] + 4.0 * (out[2] - out[1])  # rounding amplified by 2 s + 1 = 9
  np.testing.assert_allclose(np.asarray(guided), np.stack([want, want]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("design", ["cross_attention", "mmdit"])
def test_pooled_text_is_the_mean_of_the_real_tokens(design):
  """SD3's pooled conditioning: the pooled MLP reads the mean of each caption's real encoder
  outputs (numpy, float64; the null vector for null rows) and its output is added to c, so a
  model whose pooled MLP ends in zeros is the model without pooling."""
  model = _model(design, pooled_text=True)
  variables = _random_variables(model)
  x, t, y, context, mask = _inputs(model, [3, 6, 1, 4])
  y[3] = 1  # null text
  seen = []

  def record(next_fun, args, kwargs, context_):
    if context_.module.name == "pooled_embedder":
      seen.append(np.asarray(args[0], np.float64))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    out = model.apply(variables, x, t, y, context=context, context_mask=mask)
  want = (context * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  want[3] = variables["params"]["null_context"]
  np.testing.assert_allclose(seen[0], want, rtol=1e-6, atol=1e-6)
  plain = _model(design)
  params = dict(variables["params"])
  pooled = jax.tree.map(np.zeros_like, params.pop("pooled_embedder"))
  assert np.abs(np.asarray(out) - np.asarray(_apply(plain, {"params": params}, x, t, y,
                context=context, context_mask=mask))).max() > 1e-3
  zeroed = {"params": {**params, "pooled_embedder": {
      "fc1": variables["params"]["pooled_embedder"]["fc1"], "fc2": pooled["fc2"]}}}
  np.testing.assert_allclose(
      np.asarray(_apply(model, zeroed, x, t, y, context=context, context_mask=mask)),
      np.asarray(_apply(plain, {"params": params}, x, t, y, context=context, context_mask=mask)),
      rtol=1e-6, atol=1e-6)


def test_caption_dropout_rate():
  p, batch = 0.25, 512
  model = _model("cross_attention", depth=1, class_dropout_prob=p)
  variables = _random_variables(model)
  x, t, y, context, mask = _inputs(model, np.arange(batch) % L + 1)
  run = jax.jit(lambda v, y, train: model.apply(v, x, t, y, train=train, context=context,
                                                context_mask=mask, rngs={"dropout": _key(9)}),
                static_argnums=2)
  train, caption, null = (np.asarray(run(variables, yy, tr)) for yy, tr in
                          ((y, True), (y, False), (np.ones_like(y), False)))
  dist = lambda a, b: np.abs(a - b).reshape(batch, -1).max(axis=1)
  assert dist(caption, null).min() > 1e-3  # every caption is distinguishable from the null text
  is_null, is_caption = dist(train, null) < 1e-5, dist(train, caption) < 1e-5
  assert np.all(is_null ^ is_caption)  # every example saw either its caption or the null text
  assert abs(is_null.mean() - p) < 4 * math.sqrt(p * (1 - p) / batch), is_null.mean()


def _stack_blocks(params, count):
  blocks = [params.pop(f"blocks_{i}") for i in range(count)]
  params["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
  return params


@pytest.mark.parametrize("design", ["cross_attention", "mmdit", "cross_attention_video_factorized"])
def test_scan_and_remat_match_unrolled(design):
  base = _model(design)
  params = _random_variables(base)["params"]
  x, t, y, context, mask = _inputs(base, [2, 6])

  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, x, t, y, context=context, context_mask=mask) ** 2)

  ref, ref_grad = jax.jit(jax.value_and_grad(lambda p: loss(base, p)))(params)
  scanned = base.clone(scan_blocks=True, remat_policy="dots_saveable")
  count = base.depth // (2 if base.attention_layout == "factorized" else 1)
  stacked = _stack_blocks(dict(params), count)
  assert (jax.tree.map(lambda a: a.shape, stacked)
          == jax.tree.map(lambda a: a.shape, nn.unbox(_abstract(scanned))["params"]))
  value, grad = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grad, _stack_blocks(dict(ref_grad), count))


def test_gflops_closed_form():
  d, n, r, e, text = 1152, 28, 4.0, 4096, 120
  t = 256  # XL/2 at 256 px: 16 x 16 tokens
  common = dict(depth=n, hidden_size=d, num_heads=16, patch_size=2, num_classes=1,
                context_dim=e, context_length=text)
  block = (4 + 2 * r) * t * d * d + 2 * t * t * d + 3 * t * d + 6 * d * d
  ends = t * 4 * 4 * d + t * d * 4 * 8 + text * (e * d + d * d)  # patches, final, caption MLP
  cross = n * (block + 2 * t * d * d + 2 * text * d * d + 2 * t * text * d) + ends
  mmdit = n * (block - 2 * t * t * d + (4 + 2 * r) * text * d * d + 6 * d * d + 3 * text * d
               + 2 * (t + text) ** 2 * d) + ends
  mmdit -= (1 + 2 * r) * text * d * d  # the last block's text output projection and MLP are dead
  assert dit_gflops(DiT(block_type="cross_attention", **common)) == pytest.approx(cross / 1e9, rel=1e-12)
  assert dit_gflops(DiT(block_type="mmdit", **common)) == pytest.approx(mmdit / 1e9, rel=1e-12)


@pytest.mark.parametrize("design", ["cross_attention", "mmdit"])
def test_gflops_match_xla_cost_analysis(design):
  model = DiT(input_size=16, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=4,
              num_classes=1, context_dim=64, context_length=16, block_type=design)
  cost = jax.jit(lambda v, a, k: model.apply(v, *a, **k)).lower(
      _abstract(model), init_inputs(model), model_kwargs_for_init(model)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ratio = cost["flops"] / 2 / (dit_gflops(model) * 1e9)
  assert 1.0 <= ratio <= 1.04, ratio


@pytest.mark.parametrize("design", ["cross_attention", "mmdit"])
def test_sharded_2x2x2_matches_one_device(devices, design):
  model = _model(design)
  mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  inputs = _inputs(model, [1, 2, 3, 4, 5, 6, 0, 6])
  values = _random_variables(model)
  with sharding.mesh_context(mesh):
    shardings = sharding.logical_to_shardings(_abstract(model), mesh)
    params = shardings["params"]
    assert tuple(params["context_embedder"]["fc1"]["kernel"].spec) == ("fsdp", "tensor")
    assert tuple(params["context_embedder"]["fc2"]["kernel"].spec) == ("tensor", "fsdp")
    assert tuple(params["null_context"].spec) == ("fsdp",)
    block = params["blocks_0"]
    kv = block["context_block"]["qkv"] if design == "mmdit" else block["cross_attn"]["kv"]
    assert tuple(kv["kernel"].spec) == ("fsdp", None, "tensor", None)
    variables = jax.device_put(values, shardings)
    batch = sharding.batch_sharding(mesh)
    x, t, y, context, mask = (jax.device_put(a, batch) for a in inputs)
    out = _apply(model, variables, x, t, y, context=context, context_mask=mask)
  single = _apply(model, jax.device_get(variables), *inputs[:3], context=inputs[3],
                  context_mask=inputs[4])
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-5)
  assert np.abs(np.asarray(single)).max() > 0


def test_own_encoder_with_positions_sharded_matches_one_device(devices):
  """The model's own T5 with absolute positions (the digit-pairs default's encoder) on a
  2 x 2 x 2 mesh: the position table shards like the token table and the output is unchanged."""
  model = _model("cross_attention", context_dim=64, text_vocab_size=23, text_positions=True)
  mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  x, t, y, _, mask = _inputs(model, [1, 2, 3, 4, 5, 6, L, L])
  ids = np.random.default_rng(2).integers(3, 23, mask.shape).astype(np.int32)
  values = _random_variables(model)
  with sharding.mesh_context(mesh):
    shardings = sharding.logical_to_shardings(_abstract(model), mesh)
    encoder = shardings["params"]["text_encoder"]
    assert tuple(encoder["position_embedding"].spec) == tuple(encoder["token_embedding"].spec)
    variables = jax.device_put(values, shardings)
    batch = sharding.batch_sharding(mesh)
    out = _apply(model, variables, *(jax.device_put(a, batch) for a in (x, t, y)),
                 context=jax.device_put(ids, batch), context_mask=jax.device_put(mask, batch))
  single = _apply(model, jax.device_get(variables), x, t, y, context=ids, context_mask=mask)
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-5)
  moved = _apply(model, jax.device_get(variables), x, t, y, context=ids[:, ::-1].copy(),
                 context_mask=np.ones_like(mask))
  assert np.abs(np.asarray(single)).max() > 0 and not np.allclose(moved, single, atol=1e-3)


@pytest.mark.parametrize("kwargs,field", [
    (dict(block_type="adaln_zero"), "block_type"),
    (dict(block_type="in_context"), "block_type"),
    (dict(block_type="adaln"), "block_type"),
    (dict(block_type="mmdit", context_dim=0), "context_dim"),
    (dict(block_type="mmdit", num_classes=10), "num_classes"),
    (dict(block_type="mmdit", attention_layout="factorized", num_frames=2, input_size=4),
     "attention_layout"),
    (dict(block_type="cross_attention", attention_impl="pallas"), "attention_impl"),
    (dict(block_type="cross_attention", context_length=-1), "context_length"),
    (dict(block_type="adaln_zero", context_dim=0, num_classes=10, pooled_text=True), "pooled_text"),
    (dict(block_type="cross_attention", text_positions=True), "text_vocab_size"),
])
def test_bad_combinations_name_the_field(kwargs, field):
  model = DiT(**{**TINY, **kwargs})
  with pytest.raises(ValueError, match=field):
    jax.eval_shape(lambda: model.init(_key(0), *init_inputs(model),
                                      **model_kwargs_for_init(model)))


def test_bad_calls_name_the_problem():
  model = _model("mmdit")
  x, t, y, context, mask = _inputs(model, [2])
  variables = _abstract(model)
  call = lambda **kw: jax.eval_shape(lambda v: model.apply(v, x, t, y, **kw), variables)
  with pytest.raises(ValueError, match="context="):
    call()
  with pytest.raises(ValueError, match="context_dim=12"):
    call(context=context[..., :5], context_mask=mask)
  with pytest.raises(ValueError, match="context_mask"):
    call(context=context, context_mask=mask[:, :3])
  image = DiT(**{**TINY, "context_dim": 0, "num_classes": 3, "block_type": "adaln_zero"})
  with pytest.raises(ValueError, match="context_dim=0"):
    jax.eval_shape(lambda: image.init(_key(0), *init_inputs(image), context=context))
