"""dit_jax.bench_torch: the PyTorch side of the side-by-side benchmark does the same work as ours.

Its loss and sampler math are checked against dit_jax.diffusion (itself tested against the
official IDDPM code): the training loss (MSE + VB with a learned variance, decoder NLL at t = 0)
for a fixed model function and fixed t and noise, and one respaced 250-step ancestral mean and
log variance. Then a short run of each mode with diffusers' DiTTransformer2DModel on the CPU
(no torch.compile) gives JSON-ready results with sane fields.
"""
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dit_jax import bench_torch, config_files, diffusion

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_config():
  return config_files.load(ROOT / "configs/imagenet.py", "smoke")


class _Out:
  def __init__(self, sample):
    self.sample = sample


def _toy_eps(x_t, t):
  """The eps half of a deterministic stand-in network [0.5 x_t + t/1000, tanh(x_t)]."""
  return 0.5 * x_t + t / 1000.0


def test_loss_matches_dit_jax_diffusion():
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (4, 3, 4, 4)).astype(np.float32)  # NCHW
  x0[0, 0, 0, :2] = (-1.0, 1.0)  # hit the decoder's edge bins at t = 0
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 1, 500, 999])

  def torch_model(x_t, tt, y):
    eps = _toy_eps(x_t, tt.view(-1, 1, 1, 1).float())
    return _Out(torch.cat([eps, torch.tanh(x_t)], 1))

  tables = bench_torch.Tables("cpu")
  got = bench_torch.dit_loss(torch_model, tables, torch.tensor(x0), None, torch.tensor(t),
                             torch.tensor(noise))

  def jax_model(x_t, tt):
    eps = _toy_eps(x_t, tt.reshape(-1, 1, 1, 1).astype(jnp.float32))
    return jnp.concatenate([eps, jnp.tanh(x_t)], -1)

  gd = diffusion.create_diffusion()
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
  want = gd.training_losses(jax_model, nhwc(x0), jnp.asarray(t), noise=nhwc(noise))["loss"]
  np.testing.assert_allclose(float(got), float(jnp.mean(want)), rtol=2e-5)


def test_respaced_step_matches_dit_jax_diffusion():
  assert bench_torch.spaced_timesteps(250) == sorted(diffusion.space_timesteps(1000, "250"))
  tables = bench_torch.Tables("cpu", use_timesteps=bench_torch.spaced_timesteps(250))
  gd = diffusion.create_diffusion("250")
  np.testing.assert_array_equal(tables.timestep_map.numpy(), gd.timestep_map)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)
  out = rng.uniform(-1, 1, (3, 8, 2, 2)).astype(np.float32)
  t = np.array([0, 100, 249])
  mean, logvar = tables.p_mean_logvar(torch.tensor(out), torch.tensor(x), torch.tensor(t))
  ref = gd.p_mean_variance_from_output(jnp.asarray(out.transpose(0, 2, 3, 1)),
                                       jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t))
  np.testing.assert_allclose(mean.numpy().transpose(0, 2, 3, 1), ref["mean"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logvar.numpy().transpose(0, 2, 3, 1), ref["log_variance"],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_cpu_run_fields(mode):
  r = bench_torch.run(smoke_config(), mode, batch=4, steps=2, warmup=0, compile_mode="none",
                      num_sampling_steps=3, cfg_scale=4.0, device=torch.device("cpu"))
  assert r["mode"] == mode and r["framework"] == "pytorch"
  assert r["images_per_s"] == pytest.approx(4 / r["step_time_s"]["mean"])
  assert r["mfu"] is None and r["versions"]["torch"] == torch.__version__


def test_comparison_file_is_read_with_a_clear_error(tmp_path):
  """read_comparison (main calls it before the run): a --compare file that is not there is
  refused naming itself and the fix; a readable one is returned; no flag gives None."""
  missing = tmp_path / "jax_train.json"
  with pytest.raises(bench_torch.app.UsageError, match="jax_train.json.*dit_jax.bench"):
    bench_torch.read_comparison(str(missing))
  (tmp_path / "ok.json").write_text('{"images_per_s_per_device": 2.0}')
  assert bench_torch.read_comparison(str(tmp_path / "ok.json")) == {"images_per_s_per_device": 2.0}
  assert bench_torch.read_comparison(None) is None


def test_command_refuses_a_missing_comparison_before_running(tmp_path):
  """The command as a user runs it: a missing --compare file stops it with the usage error
  before any model is built or timed (no result line printed)."""
  missing = tmp_path / "jax_train.json"
  proc = subprocess.run(
      [sys.executable, "-m", "dit_jax.bench_torch", "--config", "configs/digits.py",
       "--steps", "1", "--warmup", "0", f"--compare={missing}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert f"--compare={missing}: cannot read" in proc.stderr, proc.stderr[-2000:]
  assert "images/s" not in proc.stdout, proc.stdout
