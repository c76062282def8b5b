"""The speed levers of issue 14 change how the step runs, never what it computes.

- The "qkv_attention_mlp_saveable" remat policy saves exactly the tagged activations and gives
  the unrematerialized loss gradients.
- ``config.adam_mu_dtype="bfloat16"`` stores Adam's first moment in bfloat16 and keeps one
  update within bfloat16 rounding of the closed-form AdamW step; other values are refused.
"""
import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import digits
from dit_jax import config_checks
from dit_jax import train_state as ts
from dit_jax.models.dit import DiT, init_inputs

def _small_dit(**kw):
  return DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
             num_classes=10, attention_impl="xla", **kw)


def test_named_remat_policy_saves_the_tagged_activations_and_keeps_gradients():
  plain, remat = _small_dit(), _small_dit(remat_policy="qkv_attention_mlp_saveable")
  x, t, y = init_inputs(plain, batch_size=2)
  x = jax.random.normal(jax.random.key(3), x.shape)
  t = jnp.array([10, 500])
  params = plain.init(jax.random.key(0), x, t, y)["params"]
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape),
                        nn.unbox(params))  # adaLN-Zero starts at zero: move off it

  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, x, t, y) ** 2)

  grads = [jax.jit(jax.grad(lambda p, m=m: loss(m, p)))(params) for m in (plain, remat)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  report = io.StringIO()
  with contextlib.redirect_stdout(report):  # jax's public view of what the backward pass keeps
    jax.ad_checkpoint.print_saved_residuals(lambda p: loss(remat, p), params)
  assert set(re.findall(r"named '(\w+)'", report.getvalue())) == {"qkv", "attention", "mlp_hidden"}


def test_bfloat16_adam_first_moment():
  config = digits.get_config("smoke")
  config.update(learning_rate=1e-3, weight_decay=0.0, warmup_steps=0, lr_schedule="constant",
                grad_clip_norm=0.0, adam_mu_dtype="bfloat16")
  params = {"w": jnp.linspace(-1.0, 1.0, 64)}
  grads = {"w": jnp.cos(jnp.arange(64.0))}
  tx = ts.make_optimizer(config)
  state = tx.init(params)
  assert {leaf.dtype for leaf in jax.tree.leaves(state) if leaf.ndim} == {
      jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
  # Two Adam steps on a constant gradient g: m_hat = g, v_hat = g^2, so the update is
  # -lr * g / (|g| + eps) up to the first moment's bfloat16 rounding.
  g = np.asarray(grads["w"], np.float64)
  np.testing.assert_allclose(updates["w"], -1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-2, atol=1e-6)
  config.adam_mu_dtype = "float16"
  with pytest.raises(config_checks.ConfigError, match="adam_mu_dtype"):
    ts.make_optimizer(config)
