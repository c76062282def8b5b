"""Checks multi-process training and resuming on another host count: two processes x 4 CPU
devices joined by jax.distributed (coordinator on 127.0.0.1, a free port) against one process
with 8 devices.

Reference: one uninterrupted `dit_jax.train.train` in this (8-device) process to STEPS. Each
process feeds its block of rows of the global batch (jax.make_array_from_process_local_data), so
the global batches, timesteps, noise and label dropout are the same; only the cross-process
all-reduce (gloo) may sum in another order, hence the same float32 tolerance as the mesh test.
- 1 process to HALF, then 2 processes resume to STEPS (writing one checkpoint together).
- 2 processes to HALF, then 1 process resumes to STEPS.
Both end at the reference's parameters, EMA and optimizer state: the data position is the step,
so it restores onto any process count.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits
from dit_jax import checkpoint, sharding, train
from dit_jax import train_state as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
HALF = 5
TIMEOUT_S = 300


def _config(num_train_steps: int):
  config = digits.get_config("smoke")  # constant learning rate: num_train_steps changes nothing else
  config.update(num_train_steps=num_train_steps, checkpoint_every_steps=HALF, log_every_steps=HALF)
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, num_train_steps: int) -> None:
  """`python -m dit_jax.train` as 2 processes x 4 devices on `workdir`; asserts both exit 0."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  overrides = dict(num_train_steps=num_train_steps, checkpoint_every_steps=HALF,
                   log_every_steps=HALF)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dit_jax.train", "--config", "configs/digits.py:smoke",
       "--workdir", str(workdir), f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"]
      + [f"--config.{k}={v}" for k, v in overrides.items()],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    for proc in procs:
      _, err = proc.communicate(timeout=TIMEOUT_S)
      assert proc.returncode == 0, err[-3000:]
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


def test_one_process_then_two_processes(reference, tmp_path, devices):
  train.train(_config(HALF), str(tmp_path), devices=devices)
  _train_two_processes(tmp_path, STEPS)
  assert _steps(tmp_path) == [HALF, STEPS]
  config = _config(STEPS)
  abstract, _ = ts.abstract_train_state(config, sharding.create_mesh(config.mesh.to_dict()))
  with checkpoint.manager_for_config(str(tmp_path), config) as manager:
    got = checkpoint.restore_state(manager, abstract)
  assert int(got.step) == STEPS
  _assert_close(got, reference)


def test_two_processes_then_one_process(reference, tmp_path, devices):
  _train_two_processes(tmp_path, HALF)
  assert _steps(tmp_path) == [HALF]
  got = train.train(_config(STEPS), str(tmp_path), devices=devices)
  assert int(got.step) == STEPS
  _assert_close(got, reference)
