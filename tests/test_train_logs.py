"""Checks that the training log a person reads is the project's, not its libraries' noise.

`python -m dit_jax.train --config configs/digits.py:smoke` runs in a subprocess with the user's
environment (the test setup's TF_CPP_MIN_LOG_LEVEL removed). Reference: the issue's list.
- Absent: TensorFlow's oneDNN notice and absl's pre-InitializeLog banner (clu imports TF for
  TensorBoard), Orbax's "Type handler registry ... overriding" warning (the project's own array
  handler registration).
- Present: the mesh, the parameter count (the model's own, summed here), the Gflops
  (dit_jax.flops), steps/s and the ETA.
- The project's warnings still show: a second run on the finished workdir says it is complete.
"""
import os
import subprocess
import sys

import jax
import numpy as np

from configs import digits
from dit_jax import flops
from dit_jax import train_state as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
NOISE = ("oneDNN custom operations", "absl::InitializeLog", "Type handler registry", "overriding")


def _run(workdir) -> str:
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.run(
      [sys.executable, "-m", "dit_jax.train", "--config", "configs/digits.py:smoke",
       "--workdir", str(workdir)], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def test_smoke_log_shows_the_run_without_library_noise(tmp_path):
  log = _run(tmp_path)
  for noise in NOISE:
    assert noise not in log, f"{noise!r} in the log:\n{log[:3000]}"
  config = digits.get_config("smoke")
  params = jax.eval_shape(lambda: ts.build_model(config).init(
      jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32), np.zeros((1,)),
      np.zeros((1,), np.int32)))["params"]
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  gflops = flops.dit_gflops(ts.build_model(config))
  assert "Mesh {'data': " in log
  assert f"Model: {count:,} parameters, {gflops:.4g} Gflops per image (forward)" in log, log[:3000]
  assert "steps/s" in log and "ETA" in log

  again = _run(tmp_path)
  assert "is already complete" in again
