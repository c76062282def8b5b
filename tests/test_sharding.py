"""Mesh construction and logical-to-mesh mapping (dit_jax.sharding) on 8 fake CPU devices.

Checked against what the rules say by hand: which mesh axis each logical name lands on, how -1
fills, and that bad sizes fail before anything is compiled, naming the fix. When the physical
layout optimizer refuses a topology, the plain-order fallback warns on accelerators (naming the
device kind, count and requested shape) and stays silent on CPU devices, which have no topology.
"""
import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from dit_jax import sharding


@pytest.mark.parametrize("sizes,expected", [
    ((-1, 1, 1), (8, 1, 1)),
    ((2, -1, 2), (2, 2, 2)),
    ((1, 1, -1), (1, 1, 8)),
    ((2, 2, 2), (2, 2, 2)),
])
def test_fill(sizes, expected):
  assert sharding.resolve_axis_sizes(sizes, 8) == expected


@pytest.mark.parametrize("sizes,message", [
    ((3, -1, 1), "does not divide 8"),
    ((2, 2, 1), "uses 4 devices but 8 are available"),
    ((-1, -1, 1), "at most one axis may be -1"),
    ((0, 8, 1), "positive or -1"),
])
def test_bad_sizes_name_the_problem(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_axis_sizes(sizes, 8)


def test_mesh_axes_and_batch_shards(devices):
  mesh = sharding.create_mesh(dict(data=2, fsdp=2, tensor=-1))
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}
  assert sharding.batch_shard_count(mesh) == 4
  mesh = sharding.create_mesh(dict(data=2, sequence=4))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "sequence": 4, "tensor": 1}
  assert sharding.batch_shard_count(mesh) == 2
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_plain_order_fallback_warns_on_accelerators_only(devices, monkeypatch, caplog):
  def refuse(shape, devices):
    raise NotImplementedError("unknown topology")
  monkeypatch.setattr(sharding.mesh_utils, "create_device_mesh", refuse)
  chips = [types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite", id=i) for i in range(8)]
  with caplog.at_level(logging.WARNING):
    layout = sharding._single_slice_device_array((2, 4, 1, 1), chips)  # pylint: disable=protected-access
  assert layout.shape == (2, 4, 1, 1) and [d.id for d in layout.flat] == list(range(8))
  assert "8 TPU v5 lite devices (platform tpu)" in caplog.text
  assert "(data=2, fsdp=4, sequence=1, tensor=1): NotImplementedError: unknown topology" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    mesh = sharding.create_mesh(dict(data=2, fsdp=4, tensor=1), devices)
  assert list(mesh.devices.flat) == list(devices) and not caplog.records


def test_hybrid_mesh_groups_by_process(devices):
  # One process here, so a dcn size of 1 must leave the ICI mesh unchanged.
  mesh = sharding.create_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}


class _TwoLayer(nn.Module):
  """A Dense pair with logical names, the way the DiT layers annotate theirs."""

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    h = nn.Dense(16, kernel_init=init, use_bias=False)(x)
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_mlp"))
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed"))
    return nn.Dense(8, kernel_init=init, use_bias=False)(h)


def test_logical_rules_map_params_and_match_single_device(devices):
  mesh = sharding.create_mesh(dict(data=2, fsdp=2, tensor=2))
  model = _TwoLayer()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  shardings = sharding.logical_to_shardings(abstract, mesh)
  assert shardings["params"]["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
  assert shardings["params"]["Dense_1"]["kernel"].spec == P("tensor", "fsdp")

  with sharding.mesh_context(mesh):
    params = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), x)
    xs = jax.device_put(x, sharding.batch_sharding(mesh))
    y_sharded = jax.jit(model.apply)(params, xs)
  assert params["params"]["Dense_0"]["kernel"].value.sharding.spec == P("fsdp", "tensor")
  single = jax.tree.map(lambda a: np.asarray(a), nn.unbox(params))
  y_single = model.apply(single, x)
  np.testing.assert_allclose(np.asarray(y_sharded), np.asarray(y_single), rtol=1e-5, atol=1e-6)


def test_rules_from_config_accepts_json_lists():
  rules = sharding.rules_from_config([["embed", "fsdp"], ["activation_batch", ["data", "fsdp"]]])
  assert rules == (("embed", "fsdp"), ("activation_batch", ("data", "fsdp")))
  assert sharding.rules_from_config(None) == sharding.DEFAULT_LOGICAL_AXIS_RULES
