"""Classifier-free guidance and the objective switch.

The guided wrapper is checked against a NumPy transcription of the released DiT
``forward_with_cfg`` (doubled batch, guidance on channels 0..2, the rest passed through), the
all-channel option, the guidance interval, and ``create_objective`` / ``sample`` choosing Gaussian
diffusion or flow matching from ``config.diffusion.objective``.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dit_jax import diffusion

NUM_CLASSES = 10
B, H, W, C = 2, 2, 2, 4


def _model(x, t, y):
  """Label- and time-dependent output with 2C channels (eps, variance)."""
  shift = (y.astype(jnp.float32) + 0.01 * t).reshape(-1, 1, 1, 1)
  return jnp.concatenate([x + shift, 0.5 * x - shift], -1)


def _official_forward_with_cfg(x2, t2, y2, cfg_scale):
  """NumPy version of DiT's forward_with_cfg (NHWC): batch halves are (cond, null)."""
  half = x2[: len(x2) // 2]
  out = np.asarray(_model(np.concatenate([half, half]), t2, y2))
  eps, rest = out[..., :3], out[..., 3:]
  cond, uncond = np.split(eps, 2)
  half_eps = uncond + cfg_scale * (cond - uncond)
  return np.concatenate([np.concatenate([half_eps, half_eps]), rest], -1)


def test_official_convention_matches_forward_with_cfg():
  x = np.random.default_rng(0).standard_normal((B, H, W, C)).astype(np.float32)
  t, y = np.array([7, 7]), np.array([3, 5])
  guided = diffusion.guided_model_fn(_model, 4.0, NUM_CLASSES)(x, t, y=y)
  official = _official_forward_with_cfg(np.concatenate([x, x]), np.concatenate([t, t]),
                                        np.concatenate([y, [NUM_CLASSES] * B]), 4.0)
  np.testing.assert_allclose(guided, official[:B], rtol=1e-6)


def test_all_channels_and_interval():
  x = jnp.ones((B, H, W, C))
  y = jnp.array([3, 5])
  cond = _model(x, jnp.array([100, 900]), y)
  uncond = _model(x, jnp.array([100, 900]), jnp.full((B,), NUM_CLASSES))
  all_ch = diffusion.guided_model_fn(_model, 2.0, NUM_CLASSES, guidance_channels=None)(
      x, jnp.array([100, 900]), y=y)
  np.testing.assert_allclose(all_ch[..., :C], uncond[..., :C] + 2.0 * (cond - uncond)[..., :C], rtol=1e-6)
  np.testing.assert_allclose(all_ch[..., C:], cond[..., C:])  # the variance is never guided
  interval = diffusion.guided_model_fn(_model, 2.0, NUM_CLASSES, guidance_interval=(0, 500))(
      x, jnp.array([100, 900]), y=y)
  np.testing.assert_allclose(interval[0, ..., :3], (uncond + 2.0 * (cond - uncond))[0, ..., :3], rtol=1e-6)
  np.testing.assert_allclose(interval[1], cond[1], rtol=1e-6)  # t = 900 is outside [0, 500]


def test_create_objective_switch():
  cfg = ml_collections.ConfigDict(dict(objective="gaussian", noise_schedule="linear",
                                       diffusion_steps=1000, learn_sigma=True, timestep_respacing=""))
  gaussian = diffusion.create_objective(cfg)
  assert isinstance(gaussian, diffusion.GaussianDiffusion) and gaussian.num_timesteps == 1000
  t = gaussian.sample_timesteps(jax.random.key(0), 64)
  assert t.dtype == jnp.int32 and int(t.min()) >= 0 and int(t.max()) < 1000
  cfg.objective = "flow"
  flow = diffusion.create_objective(cfg)
  assert isinstance(flow, diffusion.FlowMatching)
  assert flow.sample_timesteps(jax.random.key(0), 64).dtype == jnp.float32
  cfg.objective = "score"
  with pytest.raises(ValueError, match="config.diffusion.objective"):
    diffusion.create_objective(cfg)


def test_sample_dispatch_and_errors():
  noise = jax.random.normal(jax.random.key(0), (B, H, W, C))
  kw = dict(y=jnp.array([1, 2]))
  out = diffusion.sample(dict(objective="gaussian"), _model, noise, jax.random.key(1), sampler="ddim",
                         num_steps=4, model_kwargs=kw, cfg_scale=1.5, null_label=NUM_CLASSES)
  assert out.shape == noise.shape and bool(jnp.all(jnp.isfinite(out)))
  flow_model = lambda x, t, y: -x
  out = diffusion.sample(dict(objective="flow", learn_sigma=False), flow_model, noise, jax.random.key(1),
                         sampler="heun", num_steps=8, model_kwargs=kw)
  # dx/dt = -x integrated from t = 1 to 0 multiplies x by e (Heun, then a last Euler step).
  np.testing.assert_allclose(out, noise * np.e, rtol=0.02)
  with pytest.raises(ValueError, match="does not apply to objective 'flow'"):
    diffusion.sample(dict(objective="flow"), flow_model, noise, jax.random.key(1), sampler="ddpm", num_steps=3)
  with pytest.raises(ValueError, match="null_label"):
    diffusion.sample(dict(objective="flow"), flow_model, noise, jax.random.key(1), sampler="euler",
                     num_steps=3, model_kwargs=kw, cfg_scale=2.0)
