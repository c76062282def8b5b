"""Checks dit_jax.checkpoint on 8 fake CPU devices with the digits smoke model.

References are the saved arrays themselves (a restore must reproduce them bit for bit) and the
target shardings requested; no training is needed, so states come from `init_train_state`.
- Restore onto another mesh (fsdp=8 -> 2x2x2 and one device): identical values, target shardings.
- EMA-only restore builds no optimizer (make_optimizer is patched to fail) and returns the EMA.
- save_params_only (the converter's format) -> restore_ema_params and init_from, including a
  resolution change (8x8 -> 16x16: same parameter shapes, position table rebuilt by the model);
  a checkpoint of another model is refused naming the parameter.
- A save killed midway (a leftover `*.orbax-checkpoint-tmp`) is ignored: the latest complete
  checkpoint is used.
"""
import jax
import numpy as np
import pytest

from configs import digits
from dit_jax import checkpoint, sharding
from dit_jax import train_state as ts


def _config():
  return digits.get_config("smoke")


def _mesh(devices, **axes):
  return sharding.create_mesh(dict(dict(data=1, fsdp=1, tensor=1), **axes), devices)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, devices):
  """A state (step 0 weights, non-trivial EMA) saved from an fsdp=8 mesh."""
  config = _config()
  mesh = _mesh(devices, fsdp=8)
  state = ts.init_train_state(config, mesh, jax.random.key(1))
  state = state.replace(ema_params=jax.tree.map(lambda p: p * 0.5 + 1.0, state.params),
                        step=state.step + 7)
  workdir = str(tmp_path_factory.mktemp("run"))
  with checkpoint.manager_for_config(workdir, config) as manager:
    checkpoint.save(manager, state, config)
    manager.wait_until_finished()
  return workdir, jax.device_get(state)


@pytest.mark.parametrize("axes, count", [(dict(data=2, fsdp=2, tensor=2), 8), (dict(), 1)])
def test_restore_onto_another_mesh(saved, devices, axes, count):
  workdir, want = saved
  config = _config()
  mesh = _mesh(devices[:count], **axes)
  abstract, shardings = ts.abstract_train_state(config, mesh)
  with checkpoint.manager_for_config(workdir, config) as manager:
    assert manager.latest_step() == 7
    state = checkpoint.restore_state(manager, abstract)
  _assert_trees_equal(state, want)
  for leaf, target in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
    assert leaf.sharding.is_equivalent_to(target, leaf.ndim)


def test_ema_only_restore_builds_no_optimizer(saved, devices, monkeypatch):
  workdir, want = saved

  def no_optimizer(config):
    raise AssertionError("restore_ema_params must not build an optimizer")
  monkeypatch.setattr(ts, "make_optimizer", no_optimizer)
  mesh = _mesh(devices, data=4, tensor=2)
  config, ema = checkpoint.restore_ema_params(workdir, mesh=mesh)
  assert config.model.hidden_size == _config().model.hidden_size
  _assert_trees_equal(ema, want.ema_params)
  assert all(leaf.sharding.mesh.shape == mesh.shape for leaf in jax.tree.leaves(ema))


def test_params_only_checkpoint_init_from_and_resolution_change(tmp_path, devices):
  config = _config()
  params = jax.device_get(ts.init_train_state(config, _mesh(devices[:1]), jax.random.key(3)).params)
  checkpoint.save_params_only(str(tmp_path / "converted"), config, params)
  _, ema = checkpoint.restore_ema_params(str(tmp_path / "converted"))
  _assert_trees_equal(ema, params)

  # Fine-tune at twice the resolution (the 256 -> 512 px case): same parameter shapes.
  big = _config()
  big.model.input_size = 16
  big.data.image_size = 16
  big.init_from = str(tmp_path / "converted")
  mesh = _mesh(devices, fsdp=8)
  abstract, _ = ts.abstract_train_state(big, mesh)
  state = checkpoint.init_from(big, abstract, ts.init_train_state(big, mesh, jax.random.key(4)))
  _assert_trees_equal(state.params, params)
  _assert_trees_equal(state.ema_params, params)
  assert int(state.step) == 0
  model = ts.build_model(big)
  out = model.apply({"params": state.params}, np.zeros((2, 16, 16, 1), np.float32),
                    np.array([3, 500]), np.array([1, 2]))
  assert out.shape == (2, 16, 16, 2) and np.isfinite(np.asarray(out)).all()

  other = _config()
  other.model.hidden_size = 64
  other.init_from = big.init_from
  abstract, _ = ts.abstract_train_state(other, mesh)
  with pytest.raises(ValueError, match=r"has shape .* make config.model match"):
    checkpoint.init_from(other, abstract, None)


def test_unfinished_save_is_ignored(saved, tmp_path):
  workdir, _ = saved
  leftover = checkpoint.checkpoint_dir(workdir) / "9.orbax-checkpoint-tmp"
  leftover.mkdir()
  try:
    with checkpoint.create_manager(workdir, for_reading=True) as manager:
      assert manager.latest_step() == 7
  finally:
    leftover.rmdir()
  with pytest.raises(FileNotFoundError, match="train first"):
    checkpoint.restore_ema_params(str(tmp_path / "empty"))
