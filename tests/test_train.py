"""Checks `dit_jax.train.train` end to end on 8 fake CPU devices with the digits smoke config.

- Mesh invariance: 20 steps on meshes data=8, data=2 x fsdp=2 x tensor=2, fsdp=8 and a single
  device give the same parameters and EMA. Reference: the one-device run. The data, timesteps,
  noise and label dropout are identical on every mesh (threefry is partitionable, the batch is
  the same global array), so only the summation order of sharded reductions differs; that is
  float32 rounding (~1e-7 relative per step). Tolerance 2e-5 absolute / 1e-4 relative, two orders
  of magnitude below the distance of the weights from their initialization after 20 steps.
- EMA: with ema_decay=0 the EMA equals the weights exactly (closed form of the update); with
  decay 0.999 it lags the weights.
- A non-finite loss stops the run with FloatingPointError naming the step, and every
  checkpoint written holds finite weights. So does a finite loss and gradient whose update is
  not finite (a learning rate beyond float32's range): the guard covers the updated weights.
  A NaN learning rate is refused before anything compiles.
"""
import jax
import numpy as np
import pytest

from configs import digits
from dit_jax import checkpoint, config_checks, sample, sharding, train
from dit_jax import train_state as ts

STEPS = 20
MESHES = {
    "data8": dict(data=8, fsdp=1, tensor=1),
    "2x2x2": dict(data=2, fsdp=2, tensor=2),
    "fsdp8": dict(data=1, fsdp=8, tensor=1),
}


def smoke_config(**overrides):
  config = digits.get_config("smoke")
  config.num_train_steps = STEPS
  config.checkpoint_every_steps = STEPS
  config.log_every_steps = STEPS
  for key, value in overrides.items():
    config[key] = value
  return config


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  config = smoke_config()
  config.mesh.update(data=1, fsdp=1, tensor=1)
  state = train.train(config, str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1])
  return _host(state)


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_same_model_on_every_mesh(mesh, one_device_run, tmp_path, devices):
  config = smoke_config()
  config.mesh.update(**MESHES[mesh])
  state = _host(train.train(config, str(tmp_path), devices=devices))
  assert int(state.step) == int(one_device_run.step) == STEPS
  one = sharding.create_mesh(dict(data=1, fsdp=1, tensor=1), devices[:1])
  init_rng = jax.random.split(jax.random.key(config.seed), 3)[0]  # as train.train splits it
  initial = _host(ts.init_train_state(config, one, init_rng).params)
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(state.params),
                                                    jax.tree.leaves(initial)))
  assert moved > 1e-3  # training really changed the weights, far beyond the tolerance
  ema_gap = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(state.params),
                                                      jax.tree.leaves(state.ema_params)))
  assert ema_gap > 1e-4  # decay 0.999: the EMA lags the weights
  for tree in ("params", "ema_params"):
    for got, want in zip(jax.tree.leaves(getattr(state, tree)),
                         jax.tree.leaves(getattr(one_device_run, tree))):
      np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_ema_decay_zero_is_the_weights(tmp_path, devices):
  state = _host(train.train(smoke_config(ema_decay=0.0, num_train_steps=3), str(tmp_path),
                            devices=devices))
  for p, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(p, e)


def test_non_finite_loss_raises_naming_the_step(tmp_path, devices):
  config = smoke_config(learning_rate=1e30, grad_clip_norm=0.0, warmup_steps=0,
                        checkpoint_every_steps=1)
  with pytest.raises(FloatingPointError, match=r"Non-finite training loss at step \d+"):
    train.train(config, str(tmp_path), devices=devices)
  assert len(_assert_checkpoints_finite(str(tmp_path), devices)) < STEPS


def _assert_checkpoints_finite(workdir, devices):
  with checkpoint.create_manager(workdir, for_reading=True) as manager:
    steps = manager.all_steps()
  for step in steps:
    config_saved = checkpoint.restore_config(workdir, step)
    mesh = sharding.create_mesh(dict(data=1, fsdp=1, tensor=1), devices[:1])
    loaded = checkpoint.restore_params(workdir, ts.abstract_params(config_saved, mesh), step=step)
    for leaf in jax.tree.leaves(_host(loaded)):
      assert np.isfinite(leaf).all(), f"non-finite weights in the checkpoint of step {step}"
  return steps


def test_non_finite_update_is_refused_naming_the_step(tmp_path, devices):
  """1e39 is a finite float (it passes the config check) but inf in float32: the first step's
  loss and gradient are finite and its update is not. Nothing may be checkpointed."""
  config = smoke_config(learning_rate=1e39, warmup_steps=0, checkpoint_every_steps=1)
  with pytest.raises(FloatingPointError,
                     match=r"Non-finite parameter update \(loss and gradient were finite\) at step 0 "
                           r"\(loss=[0-9.]+, grad_norm=[0-9.]+\)\. The update was not applied"):
    train.train(config, str(tmp_path), devices=devices)
  assert _assert_checkpoints_finite(str(tmp_path), devices) == []


def test_nan_learning_rate_is_refused_before_training(tmp_path, devices):
  """The issue's reproduction: --config.learning_rate=nan --config.checkpoint_every_steps=1."""
  config = smoke_config(learning_rate=float("nan"), checkpoint_every_steps=1)
  with pytest.raises(config_checks.ConfigError, match=r"config\.learning_rate=nan is not a finite"):
    train.train(config, str(tmp_path), devices=devices)
  assert not (tmp_path / "checkpoints").exists()


def test_relative_workdir_trains_resumes_and_samples(tmp_path, monkeypatch):
  """The README's main job passes a relative --workdir; Orbax's writer needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  config = smoke_config(num_train_steps=4, checkpoint_every_steps=2)
  one = jax.devices()[:1]
  train.train(config, "workdirs/rel", devices=one)
  config.num_train_steps = 6
  state = train.train(config, "workdirs/rel", devices=one)  # resumes from step 4
  assert int(state.step) == 6
  assert sorted(p.name for p in (tmp_path / "workdirs/rel/checkpoints").iterdir())[-1] == "6"
  images = sample.generate_images(config, checkpoint.restore_ema_params("workdirs/rel")[1],
                                  [0, 1], num_steps=3)
  assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8


def test_empty_workdir_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="--workdir is empty"):
    train.train(smoke_config(), "", devices=jax.devices()[:1])
  assert list(tmp_path.iterdir()) == []  # nothing was written into the current directory


def test_fewer_steps_than_the_checkpoint_says_the_run_is_complete(tmp_path, caplog):
  config = smoke_config(num_train_steps=2, checkpoint_every_steps=2)
  one = jax.devices()[:1]
  train.train(config, str(tmp_path), devices=one)
  config.num_train_steps = 1
  with caplog.at_level("WARNING"):
    state = train.train(config, str(tmp_path), devices=one)
  assert int(state.step) == 2
  assert (f"The run in {tmp_path} is already complete: its latest checkpoint is step 2 and "
          "config.num_train_steps=1") in caplog.text


def test_flow_objective_trains_and_samples_through_the_same_commands(tmp_path):
  """One switch (config.diffusion.objective) selects flow matching for training, the periodic
  sample grid and sampling; Euler sampling needs a learn_sigma=False model (C output channels)."""
  config = smoke_config(num_train_steps=4, checkpoint_every_steps=4, sample_every_steps=4)
  config.diffusion.update(objective="flow", learn_sigma=False, t_sampling="logit_normal")
  config.model.learn_sigma = False
  config.sample.update(sampler="euler", num_sampling_steps=4)
  state = train.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert int(state.step) == 4 and (tmp_path / "samples" / "step_00000004.png").exists()
  scores = sample.sample_to_files(str(tmp_path), num_samples=20, labels=list(range(10)),
                                  output=str(tmp_path / "s.npz"), cfg_scale=2.0)
  assert np.load(tmp_path / "s.npz")["arr_0"].shape == (20, 8, 8, 1)
  assert 0.0 <= scores["accuracy"] <= 1.0  # digits runs are scored (an untrained model: ~chance)
