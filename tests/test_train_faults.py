"""Checks fault handling of `python -m dit_jax.train` in subprocesses (8 fake CPU devices each).

Reference: an uninterrupted in-process run of the same config to STEPS steps.
- SIGKILL right after the first checkpoint, then resume: the final state (weights, EMA,
  optimizer, step) is bit-identical to the reference, which needs the data iterator position and
  the step-keyed RNG to be restored exactly.
- SIGTERM (preemption): the process saves a checkpoint at the current step and exits 0; resuming
  from it is again bit-identical to the reference.
- A damaged latest checkpoint (its array files cut short): a resuming process warns naming it,
  moves it to damaged_checkpoints/, resumes from the previous step and ends bit-identical to the
  reference.
- Workdir lock: a second run (here in this process) on a workdir in use by a training process
  stops at once, naming the workdir and
  the first run's host and pid; after the first run is SIGKILLed its lock is taken over with a
  warning naming the dead owner, and a finished run leaves the lock released.
"""
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import digits
from dit_jax import checkpoint, sharding, train, workdir_lock
from dit_jax import train_state as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
EVERY = 10
OVERRIDES = dict(num_train_steps=STEPS, checkpoint_every_steps=EVERY, log_every_steps=EVERY)
POLL_S = 0.01
TIMEOUT_S = 240


def _config():
  config = digits.get_config("smoke")
  config.update(OVERRIDES)
  return config


def _start(workdir, **overrides):
  cmd = [sys.executable, "-m", "dit_jax.train", "--config", "configs/digits.py:smoke",
         "--workdir", str(workdir)] + [f"--config.{k}={v}"
                                       for k, v in dict(OVERRIDES, **overrides).items()]
  return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, workdir, step):
  """Blocks until checkpoint `step` is complete (Orbax renames it into place when finalized)."""
  done = checkpoint.checkpoint_dir(str(workdir)) / str(step)
  deadline = time.monotonic() + TIMEOUT_S
  while not done.exists():
    if proc.poll() is not None:
      pytest.fail(f"training exited early ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail("no checkpoint within the timeout")
    time.sleep(POLL_S)


def _steps(workdir):
  with checkpoint.create_manager(str(workdir), for_reading=True) as manager:
    return manager.all_steps()


def _assert_bit_identical(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, devices):
  return jax.device_get(train.train(_config(), str(tmp_path_factory.mktemp("reference"))))


def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
  proc = _start(tmp_path)
  _wait_for_checkpoint(proc, tmp_path, EVERY)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(TIMEOUT_S) == -signal.SIGKILL
  steps = _steps(tmp_path)
  assert steps and max(steps) < STEPS, steps  # killed mid-run
  resumed = train.train(_config(), str(tmp_path))
  _assert_bit_identical(resumed, reference)


def test_sigterm_saves_exits_zero_and_resumes_exactly(reference, tmp_path):
  proc = _start(tmp_path)
  _wait_for_checkpoint(proc, tmp_path, EVERY)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(TIMEOUT_S) == 0, proc.stderr.read()[-3000:]
  assert "Preempted: saved step" in proc.stderr.read()
  steps = _steps(tmp_path)
  assert EVERY <= max(steps) < STEPS, steps
  resumed = train.train(_config(), str(tmp_path))
  _assert_bit_identical(resumed, reference)


def test_resume_skips_a_damaged_checkpoint_and_is_bit_identical(reference, tmp_path):
  config = _config()
  config.num_train_steps = 2 * EVERY
  train.train(config, str(tmp_path))
  damaged = checkpoint.checkpoint_dir(str(tmp_path)) / str(2 * EVERY)
  for path in pathlib.Path(str(damaged), "state").rglob("d/*"):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  proc = _start(tmp_path)
  _, err = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 0, err[-3000:]
  assert f"Checkpoint {damaged} is damaged" in err
  assert f"Resuming from step {EVERY}. The damaged step(s) [{2 * EVERY}] were moved to" in err
  assert (tmp_path / checkpoint.DAMAGED_SUBDIR / str(2 * EVERY) / "state").is_dir()
  with checkpoint.manager_for_config(str(tmp_path), _config()) as manager:
    assert max(manager.all_steps()) == STEPS
    mesh = sharding.create_mesh(_config().mesh.to_dict())
    resumed = checkpoint.restore_state(manager, ts.abstract_train_state(_config(), mesh)[0])
  _assert_bit_identical(resumed, reference)


def test_second_run_on_a_workdir_in_use_stops_and_a_dead_owner_is_taken_over(tmp_path, caplog):
  first = _start(tmp_path, num_train_steps=10**6, checkpoint_every_steps=10**6)
  lock = tmp_path / workdir_lock.LOCK_FILE
  owner = f"host {socket.gethostname()}, pid {first.pid}, started"
  deadline = time.monotonic() + TIMEOUT_S
  while not (lock.exists() and owner in lock.read_text()):
    assert first.poll() is None, first.stderr.read()[-3000:]
    assert time.monotonic() < deadline, "the first run never took the lock"
    time.sleep(POLL_S)
  config = _config()
  config.update(num_train_steps=2, checkpoint_every_steps=2)
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=re.escape(f"The workdir {tmp_path} is in use by another "
                                       f"training run ({owner}")):
      train.train(config, str(tmp_path), devices=jax.devices()[:1])
    assert first.poll() is None  # the first run goes on
  finally:
    first.kill()
  assert first.wait(TIMEOUT_S) == -signal.SIGKILL

  with caplog.at_level("WARNING"):
    train.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert "Taking over the workdir lock" in caplog.text and owner in caplog.text
  assert lock.read_text() == ""  # released at exit
