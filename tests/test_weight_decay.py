"""Which parameters AdamW's weight decay reaches (`config.weight_decay_mask`).

Reference: the AdamW update in closed form. With zero gradients Adam's moments stay zero, so
one update is exactly -lr * weight_decay * p on a decayed parameter and exactly 0 on any other.
"matrices" (the default) decays the kernels of the linear maps and the patch embedding only:
never biases, LayerNorm scales (the in_context blocks have affine norms) or the label embedding
table, also when scanned blocks give every parameter a leading layer axis. "all" decays every
parameter, "none" none; an unknown value is refused naming the field.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import digits
from dit_jax import config_checks, sharding
from dit_jax import train_state as ts
from dit_jax.models import dit

LR, DECAY = 1e-3, 0.1


def _config(mask: str | None, scan: bool = False):
  config = digits.get_config("smoke")
  config.model.update(block_type="in_context", scan_blocks=scan)
  config.update(learning_rate=LR, weight_decay=DECAY, warmup_steps=0, lr_schedule="constant",
                grad_clip_norm=0.0)
  if mask is not None:
    config.weight_decay_mask = mask
  return config


def _decayed_names(config) -> tuple[set, set]:
  """(names of decayed leaves, names of undecayed ones) from one update with zero gradients."""
  model = ts.build_model(config)
  params = nn.unbox(model.init(jax.random.key(0), *dit.init_inputs(model))["params"])
  params = jax.tree.map(lambda p: p + 0.5, params)  # no zero leaves (biases start at 0)
  tx = ts.make_optimizer(config)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  decayed, kept = set(), set()
  for (path, p), u in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(updates)):
    name = jax.tree_util.keystr(path)
    if np.any(np.asarray(u) != 0):
      np.testing.assert_allclose(u, -LR * DECAY * np.asarray(p), rtol=1e-6, atol=0)
      decayed.add(name)
    else:
      kept.add(name)
  return decayed, kept


@pytest.mark.parametrize("scan", [False, True])
def test_matrices_mask_decays_kernels_only(scan):
  decayed, kept = _decayed_names(_config(None, scan))  # the default
  assert decayed and all(n.endswith("['kernel']") for n in decayed)
  assert {n.rsplit("[", 1)[1] for n in kept} == {"'bias']", "'scale']", "'embedding_table']"}
  assert any("x_embedder" in n for n in decayed) and any("qkv" in n for n in decayed)


def test_all_and_none_masks():
  decayed, kept = _decayed_names(_config("all"))
  assert not kept and any(n.endswith("['embedding_table']") for n in decayed)
  decayed, kept = _decayed_names(_config("none"))
  assert not decayed and kept


def test_mask_sees_through_logical_boxes(devices):
  """The state is initialized from logically boxed params: the mask must read them the same."""
  config = _config(None)
  model = ts.build_model(config)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *dit.init_inputs(model))["params"])
  mask = jax.tree.leaves(ts.decay_mask(boxed))
  assert mask == jax.tree.leaves(ts.decay_mask(nn.unbox(boxed))) and any(mask) and not all(mask)
  mesh = sharding.create_mesh(dict(data=-1, fsdp=1, tensor=1), devices[:1])
  ts.abstract_train_state(config, mesh)  # builds the masked optimizer state on boxed params


def test_unknown_mask_is_refused_naming_the_field():
  with pytest.raises(config_checks.ConfigError, match=r"config.weight_decay_mask='biases' is not "
                     r"one of \('matrices', 'all', 'none'\)"):
    ts.make_optimizer(_config("biases"))
