"""Checks multi-process training and resuming on another host count: two processes x 4 CPU
devices joined by jax.distributed (coordinator on 127.0.0.1, a free port) against one process
with 8 devices.

Reference: one uninterrupted `dit_jax.train.train` in this (8-device) process to STEPS. Each
process feeds its block of rows of the global batch (jax.make_array_from_process_local_data), so
the global batches, timesteps, noise and label dropout are the same; only the cross-process
all-reduce (gloo) may sum in another order, hence the same float32 tolerance as the mesh test.
- 1 process to FIRST, then 2 processes resume to STEPS (writing one checkpoint together).
- 2 processes preempted: SIGTERM to process 1 only, after the checkpoint at FIRST; both
  processes save the same step (JAX's preemption service, Orbax's reached_preemption) and exit 0;
  then 1 process resumes to STEPS. (The preempted run's num_train_steps is larger, so it cannot
  end before the signal; with a constant learning rate nothing else depends on it.)
Both end at the reference's parameters, EMA and optimizer state: the data position is the step,
so it restores onto any process count.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import digits
from dit_jax import checkpoint, sharding, train
from dit_jax import train_state as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10  # more steps drift beyond the tolerance (summation order, amplified by Adam)
FIRST = 2  # first checkpoint: the preempted run must stop before STEPS
TIMEOUT_S = 300
POLL_S = 0.01


def _config(num_train_steps: int):
  config = digits.get_config("smoke")  # constant learning rate: num_train_steps changes nothing else
  config.update(num_train_steps=num_train_steps, checkpoint_every_steps=FIRST,
                log_every_steps=STEPS)
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, num_train_steps: int, preempt: bool = False) -> list[str]:
  """`python -m dit_jax.train` as 2 processes x 4 devices on `workdir`; asserts both exit 0.

  With `preempt`, process 1 gets SIGTERM once the checkpoint at FIRST is complete. Returns each
  process's stderr.
  """
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  overrides = dict(num_train_steps=num_train_steps, log_every_steps=STEPS,
                   checkpoint_every_steps=FIRST if preempt else num_train_steps)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dit_jax.train", "--config", "configs/digits.py:smoke",
       "--workdir", str(workdir), f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"]
      + [f"--config.{k}={v}" for k, v in overrides.items()],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    if preempt:
      deadline = time.monotonic() + TIMEOUT_S
      while not (checkpoint.checkpoint_dir(str(workdir)) / str(FIRST)).exists():
        assert all(p.poll() is None for p in procs), "training exited before the checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the timeout"
        time.sleep(POLL_S)
      procs[1].send_signal(signal.SIGTERM)
    errors = []
    for proc in procs:
      _, err = proc.communicate(timeout=TIMEOUT_S)
      assert proc.returncode == 0, err[-3000:]
      errors.append(err)
    return errors
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()


def _steps(workdir):
  ckpt = checkpoint.checkpoint_dir(str(workdir))
  return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir())


def _assert_close(got, want):
  for a, b in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, devices):
  return jax.device_get(train.train(_config(STEPS), str(tmp_path_factory.mktemp("reference"))))


@pytest.mark.slow
def test_one_process_then_two_processes(reference, tmp_path, devices):
  train.train(_config(FIRST), str(tmp_path), devices=devices)
  _train_two_processes(tmp_path, STEPS)
  assert _steps(tmp_path) == [FIRST, STEPS]
  config = _config(STEPS)
  abstract, _ = ts.abstract_train_state(config, sharding.create_mesh(config.mesh.to_dict()))
  with checkpoint.manager_for_config(str(tmp_path), config) as manager:
    got = checkpoint.restore_state(manager, abstract)
  assert int(got.step) == STEPS
  _assert_close(got, reference)


@pytest.mark.slow
def test_two_processes_preempted_then_one_process(reference, tmp_path, devices):
  errors = _train_two_processes(tmp_path, 100 * STEPS, preempt=True)
  saved = max(_steps(tmp_path))
  assert FIRST < saved < STEPS
  for err in errors:  # both processes stop at the step they agreed on
    assert f"Preempted: saved step {saved}; exiting." in err, err[-3000:]
  got = train.train(_config(STEPS), str(tmp_path), devices=devices)
  assert int(got.step) == STEPS
  _assert_close(got, reference)
