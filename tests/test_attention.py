"""Attention kernel selection (attention_impl, issue 14 item 1).

- ``resolve_attention_impl``: "auto" is cuDNN on NVIDIA GPUs for bf16/fp16, Pallas on TPU, XLA
  elsewhere (the issue's table); explicit kernels stand; unknown values are refused by name, in
  the layer and in the config checks.
- On CPU "auto" is XLA: the default DiT's output is bit-identical to attention_impl="xla".
- The Pallas TPU flash kernel, run on CPU in Pallas' TPU interpret mode, matches XLA attention
  (values and input/parameter gradients) at DiT's shapes (B=2, T=256, 4 heads of 64), within
  float32 rounding; an explicit "pallas" refuses sequence lengths it cannot tile.
- A tiny DiT (256 tokens) AOT-compiles for a v5e:2x2 slice with "auto": the compiled train step
  contains the Mosaic kernel (auto picked Pallas from the mesh's TPU devices on this CPU host) and
  no all-gather (shard_map keeps the batch sharded; XLA alone would gather the kernel's inputs).
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from dit_jax import aot, bench, config_checks, config_files, sharding, train_state
from dit_jax.models import dit, layers

ROOT = pathlib.Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("dtype,platform,kind,expected", [
    (jnp.bfloat16, "gpu", H100, "cudnn"),
    (jnp.float16, "gpu", "NVIDIA A100-SXM4-40GB", "cudnn"),
    (jnp.float32, "gpu", H100, "xla"),
    (jnp.bfloat16, "gpu", "AMD Instinct MI300X", "xla"),
    (jnp.bfloat16, "tpu", "TPU v5p", "pallas"),
    (jnp.float32, "tpu", "TPU v5 lite", "pallas"),
    (jnp.bfloat16, "cpu", "cpu", "xla"),
    (jnp.float32, "cpu", "cpu", "xla"),
])
def test_auto_resolution(dtype, platform, kind, expected):
  assert layers.resolve_attention_impl("auto", dtype, platform, kind) == expected


@pytest.mark.parametrize("impl", ["xla", "cudnn", "pallas"])
def test_explicit_kernels_stand(impl):
  for platform in ("cpu", "gpu", "tpu"):
    assert layers.resolve_attention_impl(impl, jnp.float32, platform) == impl


def test_unknown_impl_refused_by_name():
  with pytest.raises(ValueError, match="attention_impl='flash' is not supported"):
    layers.resolve_attention_impl("flash", jnp.bfloat16, "gpu", H100)
  model = dit.DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1,
                  num_heads=2, num_classes=10, attention_impl="flash")
  with pytest.raises(ValueError, match="attention_impl='flash' must be one of"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), jnp.zeros((1,), int))


def _imagenet_smoke():
  return config_files.load(ROOT / "configs/imagenet.py", "smoke")


def test_config_check_refuses_unknown_impl():
  config = _imagenet_smoke()
  config.model.attention_impl = "flash"
  with pytest.raises(config_checks.ConfigError, match="config.model.attention_impl='flash'"):
    config_checks.validate(config, num_devices=8, check_data=False)


def test_auto_is_the_default_and_xla_on_cpu():
  assert dit.DiT.attention_impl == "auto" and layers.Attention.attention_impl == "auto"
  assert _imagenet_smoke().model.attention_impl == "auto"
  kw = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
            num_classes=10, block_type="adaln")  # adaln: non-zero blocks, attention matters
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  t, y = jnp.array([3, 700]), jnp.array([1, 9])
  params = dit.DiT(**kw).init(jax.random.key(1), x, t, y)
  auto = dit.DiT(**kw).apply(params, x, t, y)
  xla = dit.DiT(**kw, attention_impl="xla").apply(params, x, t, y)
  np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))


def test_pallas_kernel_matches_xla_in_interpret_mode():
  batch, tokens, heads, head_dim = 2, 256, 4, 64
  x = jax.random.normal(jax.random.key(0), (batch, tokens, heads * head_dim))
  params = layers.Attention(heads, "xla").init(jax.random.key(1), x)

  def value_and_grads(impl):
    loss = lambda p, x: jnp.sum(jnp.sin(layers.Attention(heads, impl).apply(p, x)))
    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

  reference = value_and_grads("xla")
  with pltpu.force_tpu_interpret_mode():
    pallas = value_and_grads("pallas")
  for ref, got in zip(jax.tree.leaves(reference), jax.tree.leaves(pallas)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(ref).max()))


def test_explicit_pallas_refuses_untileable_lengths():
  x = jnp.zeros((1, 16, 64))
  params = layers.Attention(2, "xla").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="multiples of 128, got 16 and 16"):
    layers.Attention(2, "pallas").apply(params, x)


def test_auto_compiles_pallas_for_tpu_slice():
  config = _imagenet_smoke()
  config.model.update(input_size=32, hidden_size=128, num_heads=2)  # 256 tokens, head_dim 64
  config.data.image_size = 32 * 8
  mesh = sharding.create_mesh(config.mesh, aot.topology_devices("v5e:2x2"))
  abstract_state, state_shardings = train_state.abstract_train_state(config, mesh)
  step = train_state.jit_train_step(config, mesh, state_shardings)
  hlo = step.lower(*bench.abstract_step_args(config, mesh, abstract_state)).compile().as_text()
  assert mesh.shape["data"] == 4 and "tpu_custom_call" in hlo
  assert "all-gather" not in hlo
