"""Muon (`config.optimizer="muon"`, dit_jax/muon.py and train_state.make_optimizer).

References are closed-form:
- Which axes each kernel contracts and produces, written out by hand from the layers' definitions
  (qkv: (embed) -> (3, heads, kv); attention output: (heads, kv) -> (embed); ...), also with the
  layer axis of scanned blocks and for a text model's cross-attention.
- The first update with random gradients. Muon's Newton-Schulz iteration is an odd polynomial of
  the gradient matrix, so the update has the gradient's singular vectors (from numpy's SVD) and
  singular values near 1, times lr x 0.2 x sqrt(max(fan_in, fan_out)); orthogonalizing a fused
  qkv kernel as one matrix instead of q, k and v each would break the per-slice check. The
  parameters left to Adam move by Nesterov Adam's first step, -lr x sign(g) x (1 + b1 / (1 + b1)).
- On 8 fake devices (2 x 2 x 2 mesh) 20 steps give the one-device weights (float32 rounding
  only, as tests/test_train.py), and the checkpoint, whose optimizer state holds optax's empty
  MaskedNode where Muon and Adam split the parameters, restores onto one device bit for bit.
"""
import jax
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import digits
from dit_jax import checkpoint, config_checks, sharding, train
from dit_jax import train_state as ts
from dit_jax.models import dit

LR = 1e-3


def _muon_config(**overrides):
  config = digits.get_config("smoke")
  config.update(optimizer="muon", **overrides)
  return config


def _dims(config) -> dict:
  flat = {}
  is_dims = lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)
  for path, dims in jax.tree_util.tree_leaves_with_path(
      ts._muon_dimension_numbers(config), is_leaf=is_dims):  # pylint: disable=protected-access
    flat["/".join(str(k.key) for k in path)] = (
        None if dims is None else (tuple(dims.reduction_axis), tuple(dims.output_axis)))
  return flat


@pytest.mark.parametrize("scan", [False, True])
def test_axes_of_each_kernel(scan):
  config = _muon_config()
  config.model.scan_blocks = scan
  dims = _dims(config)
  block = "blocks" if scan else "blocks_0"
  s = int(scan)  # the layer axis comes first when blocks are scanned
  assert dims[f"{block}/attn/qkv/kernel"] == ((0 + s,), (2 + s, 3 + s))
  assert dims[f"{block}/attn/proj/kernel"] == ((0 + s, 1 + s), (2 + s,))
  for name in ("mlp/fc1", "mlp/fc2", "adaLN_modulation"):
    assert dims[f"{block}/{name}/kernel"] == ((0 + s,), (1 + s,))
  assert dims["t_embedder/mlp_0/kernel"] == ((0,), (1,))
  assert dims["final_layer/adaLN_modulation/kernel"] == ((0,), (1,))
  for adam in ("x_embedder/kernel", "y_embedder/embedding_table", "final_layer/linear/kernel",
               f"{block}/attn/qkv/bias", f"{block}/mlp/fc1/bias"):
    assert dims[adam] is None


def test_axes_of_cross_attention():
  config = _muon_config()
  config.model.update(block_type="cross_attention", num_classes=1, context_dim=64,
                      context_length=16)
  dims = _dims(config)
  assert dims["blocks_0/cross_attn/q/kernel"] == ((0,), (1, 2))
  assert dims["blocks_0/cross_attn/kv/kernel"] == ((0,), (2, 3))
  assert dims["blocks_0/cross_attn/proj/kernel"] == ((0, 1), (2,))
  assert all(v is None for k, v in dims.items() if k.startswith("context_embedder/"))


def test_first_update_is_orthogonalized_per_matrix():
  config = _muon_config(learning_rate=LR, warmup_steps=0, lr_schedule="constant",
                        grad_clip_norm=0.0)
  model = ts.build_model(config)
  params = nn.unbox(model.init(jax.random.key(0), *dit.init_inputs(model))["params"])
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  grads = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
  tx = ts.make_optimizer(config)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)  # one program, not op by op
  dims = _dims(config)
  b1 = config.adam_b1
  checked = 0
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = "/".join(str(k.key) for k in path)
    u = np.asarray(_at(updates, path))
    g = np.asarray(g)
    if dims[name] is None:  # Nesterov Adam's first step
      np.testing.assert_allclose(u, -LR * (1 + b1 / (1 + b1)) * g / (np.abs(g) + 1e-8),
                                 rtol=2e-5)  # optax's bias correction rounds b2 to float32
      continue
    for g_matrix, u_matrix in _matrices(g, u, *dims[name]):
      left, _, right_t = np.linalg.svd(g_matrix, full_matrices=False)
      scale = -LR * 0.2 * np.sqrt(max(g_matrix.shape))
      in_basis = left.T @ u_matrix @ right_t.T / scale
      diagonal = np.diag(in_basis)
      np.testing.assert_allclose(in_basis - np.diag(diagonal), 0.0, atol=1e-4)
      assert diagonal.max() < 1.25 and 0.7 < diagonal.mean() < 1.1, diagonal
      checked += 1
  # Per block q, k, v, the attention output, fc1, fc2 and adaLN; two timestep maps; the final
  # layer's adaLN.
  assert checked == config.model.depth * 7 + 2 + 1


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def _matrices(g, u, reduction, output):
  """The (fan_in, fan_out) matrices of g and u, one per index of the remaining (batch) axes."""
  batch = [a for a in range(g.ndim) if a not in reduction + output]
  order = batch + list(reduction) + list(output)
  fan_in = int(np.prod([g.shape[a] for a in reduction]))
  fan_out = int(np.prod([g.shape[a] for a in output]))
  g, u = (np.transpose(x, order).reshape(-1, fan_in, fan_out) for x in (g, u))
  return zip(g, u)


def test_sharded_training_and_restore(tmp_path, devices):
  config = _muon_config()
  config.update(num_train_steps=20, checkpoint_every_steps=20, log_every_steps=20)
  states = {}
  for name, mesh, devs in (("one", dict(data=1, fsdp=1, tensor=1), devices[:1]),
                           ("2x2x2", dict(data=2, fsdp=2, tensor=2), devices)):
    config.mesh.update(**mesh)
    states[name] = jax.device_get(train.train(config, str(tmp_path / name), devices=devs))
  for got, want in zip(jax.tree.leaves(states["2x2x2"].params),
                       jax.tree.leaves(states["one"].params), strict=True):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  one = sharding.create_mesh(dict(data=1, fsdp=1, tensor=1), devices[:1])
  abstract, _ = ts.abstract_train_state(config, one)
  with checkpoint.manager_for_config(str(tmp_path / "2x2x2"), config) as manager:
    restored = jax.device_get(checkpoint.restore_state(manager, abstract))
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(states["2x2x2"]), strict=True):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("overrides, message", [
    (dict(optimizer="lion"), r"config.optimizer='lion' is not one of \('adamw', 'muon'\)"),
    (dict(optimizer="muon", weight_decay=0.1),
     r"config.weight_decay=0.1 is not supported with config.optimizer='muon'"),
])
def test_bad_optimizer_settings_are_refused(overrides, message):
  config = digits.get_config("smoke")
  config.update(**overrides)
  with pytest.raises(config_checks.ConfigError, match=message):
    ts.make_optimizer(config)
