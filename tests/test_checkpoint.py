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
- A damaged latest checkpoint (a TensorStore file cut short, no `_METADATA`, garbage config
  JSON): resume restores the previous step exactly and moves the damaged one to damaged_checkpoints/; sampling reads the previous EMA and leaves
  the damaged one in place; with nothing intact both say what to do.
- Resuming with another model shape or batch size is refused by name before any array is read.
- Preemption with several processes (process count patched to 2): no SIGTERM handler of ours,
  Orbax's reached_preemption decides (a disabled preemption service means no preemption).
- A checkpoint of the older format (a grain iterator file per process, here 2) resumes on one
  process, silently.
"""
import pathlib
import shutil
import signal

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental import multihost_utils

from configs import digits
from dit_jax import checkpoint, data, sharding, train
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


def _truncate_arrays(step_dir):
  for path in pathlib.Path(step_dir, "state").rglob("d/*"):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


DAMAGE = {
    "array file cut short": _truncate_arrays,
    "no _METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "garbage config JSON": lambda d: (d / "config" / "metadata").write_text("{garbage"),
}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, devices):
  """Steps 3 and 5 of a run (different weights and EMA), saved from data=8."""
  config = _config()
  mesh = _mesh(devices, data=8)
  state = ts.init_train_state(config, mesh, jax.random.key(5))
  workdir = tmp_path_factory.mktemp("two")
  saved = {}
  with checkpoint.manager_for_config(str(workdir), config) as manager:
    for step in (3, 5):
      state = state.replace(step=state.step * 0 + step,
                            ema_params=jax.tree.map(lambda p, s=step: p * s, state.params))
      checkpoint.save(manager, state, config)
      manager.wait_until_finished()
      saved[step] = jax.device_get(state)
  return workdir, saved


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back(two_steps, tmp_path, devices, caplog, damage):
  source, saved = two_steps
  config = _config()
  for name in ("resume", "sample"):
    shutil.copytree(source, tmp_path / name)
    DAMAGE[damage](checkpoint.checkpoint_dir(str(tmp_path / name)) / "5")
  damaged = checkpoint.checkpoint_dir(str(tmp_path / "resume")) / "5"

  abstract, _ = ts.abstract_train_state(config, _mesh(devices, data=8))
  with caplog.at_level("WARNING"), checkpoint.manager_for_config(
      str(tmp_path / "resume"), config) as manager:
    state = checkpoint.restore_latest_intact(manager, config, abstract)
    assert manager.all_steps() == [3]
  _assert_trees_equal(state, saved[3])
  assert f"Checkpoint {damaged} is damaged" in caplog.text
  moved = tmp_path / "resume" / checkpoint.DAMAGED_SUBDIR / "5"
  assert f"moved to {moved.parent}" in caplog.text and (moved / "state").is_dir()

  caplog.clear()
  with caplog.at_level("WARNING"):
    _, ema = checkpoint.restore_ema_params(str(tmp_path / "sample"), mesh=_mesh(devices[:1]))
  _assert_trees_equal(ema, saved[3].ema_params)
  assert "is damaged" in caplog.text
  assert (checkpoint.checkpoint_dir(str(tmp_path / "sample")) / "5" / "state").is_dir()


def test_no_intact_checkpoint_says_what_to_do(two_steps, tmp_path, devices):
  source, _ = two_steps
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  for step in ("3", "5"):
    _truncate_arrays(checkpoint.checkpoint_dir(str(tmp_path)) / step)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=r"No intact checkpoint in .*: step\(s\) \[5, 3\] could not be read.*"
                           r"nothing was deleted\. To start this run from scratch, move"):
    train.train(_config(), str(tmp_path), devices=devices)
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"step\(s\) \[5, 3\].*--step"):
    checkpoint.restore_ema_params(str(tmp_path), mesh=_mesh(devices[:1]))
  assert sorted(p.name for p in checkpoint.checkpoint_dir(str(tmp_path)).iterdir()) == ["3", "5"]


def test_resume_with_another_model_names_the_parameter(two_steps, tmp_path, devices):
  source, _ = two_steps
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  config = _config()
  config.model.hidden_size = 64
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"params\['blocks_0'\]\['adaLN_modulation'\]\['bias'\] has shape \(192,\) "
                           r"in .* \(step 5\) but the model needs \(384,\); resume with the "
                           r"checkpoint's config.model"):  # 6 x width
    train.train(config, str(tmp_path), devices=devices)


def test_resume_with_another_batch_size_is_refused(two_steps, tmp_path, devices):
  source, _ = two_steps
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  config = _config()
  config.global_batch_size = 32
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"config.global_batch_size=32 but the checkpoint .*5 was trained with "
                           r"16: .* Resume with --config.global_batch_size=16"):
    train.train(config, str(tmp_path), devices=devices)


def test_checkpoint_of_two_processes_with_their_iterators_resumes_on_one(tmp_path, devices, caplog):
  """Checkpoints from before the data position was the step hold a grain iterator file per process:
  they resume on another process count, and without warnings."""
  config = _config()
  mesh = _mesh(devices, data=8)
  state = ts.init_train_state(config, mesh, jax.random.key(6))
  iterator = iter(data.create_dataset(config.data, global_batch_size=config.global_batch_size,
                                      seed=config.seed, process_index=0, process_count=1))
  with checkpoint.manager_for_config(str(tmp_path), config) as manager:
    manager.save(4, args=ocp.args.Composite(**{
        checkpoint.STATE_ITEM: ocp.args.StandardSave(state.to_dict()),
        checkpoint.CONFIG_ITEM: ocp.args.JsonSave(config.to_dict()),
        checkpoint.LEGACY_DATA_ITEM: grain.checkpoint.CheckpointSave(iterator)}))
  data_dir = checkpoint.checkpoint_dir(str(tmp_path)) / "4" / checkpoint.LEGACY_DATA_ITEM
  saved = (data_dir / "process_0-of-1.json").read_text()
  (data_dir / "process_0-of-1.json").unlink()
  for name in ("process_0-of-2.json", "process_1-of-2.json"):
    (data_dir / name).write_text(saved)

  abstract, _ = ts.abstract_train_state(config, mesh)
  with caplog.at_level("WARNING"), checkpoint.manager_for_config(str(tmp_path), config) as manager:
    restored = checkpoint.restore_latest_intact(manager, config, abstract)
  _assert_trees_equal(restored, jax.device_get(state))
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_multi_process_preemption_is_orbax_s_sync_point(tmp_path, monkeypatch):
  """With several processes the watcher installs no SIGTERM handler (JAX's preemption service
  owns SIGTERM) and asks Orbax, which turns a disabled service into "not preempted"."""
  handler = signal.getsignal(signal.SIGTERM)
  with checkpoint.create_manager(str(tmp_path)) as manager, monkeypatch.context() as patch:
    patch.setattr(jax, "process_count", lambda: 2)
    watcher = checkpoint.PreemptionWatcher(manager)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert not watcher.should_stop(3)  # no jax.distributed here: the service is not running
    patch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 7)
    assert [watcher.should_stop(s) for s in (6, 7)] == [False, True]
    watcher.close()
  assert signal.getsignal(signal.SIGTERM) is handler
