"""Checks multi-process training: two processes x 4 CPU devices joined by jax.distributed
(coordinator on 127.0.0.1, a free port) against one process with 8 devices.

Reference: `dit_jax.train.train` in this (8-device) process on the same config. Each process
feeds its block of rows of the global batch (jax.make_array_from_process_local_data), so the
global batches, timesteps, noise and label dropout are the same; only the cross-process
all-reduce (gloo) may sum in another order, hence the same float32 tolerance as the mesh test.
The two processes write one checkpoint together (one step directory, one data-iterator file
per process).
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import digits
from dit_jax import checkpoint, sharding, train
from dit_jax import train_state as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
OVERRIDES = dict(num_train_steps=STEPS, checkpoint_every_steps=STEPS, log_every_steps=STEPS)
TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_the_same_model_as_one(tmp_path, devices):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  workdir = tmp_path / "two"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dit_jax.train", "--config", "configs/digits.py:smoke",
       "--workdir", str(workdir), f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"]
      + [f"--config.{k}={v}" for k, v in OVERRIDES.items()],
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

  ckpt = checkpoint.checkpoint_dir(str(workdir))
  assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == [str(STEPS)]
  assert sorted(p.name for p in (ckpt / str(STEPS) / "data").iterdir()
                if p.suffix == ".json") == ["process_0-of-2.json", "process_1-of-2.json"]

  config = digits.get_config("smoke")
  config.update(OVERRIDES)
  want = jax.device_get(train.train(config, str(tmp_path / "one")))
  mesh = sharding.create_mesh(config.mesh.to_dict())
  abstract, _ = ts.abstract_train_state(config, mesh)
  with checkpoint.manager_for_config(str(workdir), config) as manager:
    got = jax.device_get(checkpoint.restore_state(manager, abstract))
  assert int(got.step) == STEPS
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)
