"""Gaussian diffusion against diffusers' PyTorch schedulers, an independent implementation.

DDPMScheduler (linear and squaredcos_cap_v2 betas; learned_range, fixed_small and fixed_large
variances; noise and velocity prediction) gives the betas, alpha-bars, the velocity target and
one ancestral step for the same model output and noise; DDIMScheduler gives one DDIM step (eta 0 and 0.5) on the "ddimN" respaced process.
diffusers works in NCHW, we in NHWC: arrays are transposed between the two.
"""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from dit_jax.diffusion import create_diffusion

SHAPE = (2, 4, 4, 3)  # NHWC


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(a), (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.numpy(), (0, 2, 3, 1))


def _const_model(output):
  return lambda x, t: output


@pytest.mark.parametrize("schedule,diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_tables_match_ddpm_scheduler(schedule, diffusers_name):
  d = create_diffusion("", noise_schedule=schedule)
  ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
  np.testing.assert_allclose(d.betas, ref.betas.numpy(), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(d.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-9)
  assert d.betas.dtype == np.float64 and d.betas.shape == (1000,)


@pytest.mark.parametrize("variance_type,kwargs", [
    ("learned_range", dict(learn_sigma=True)),
    ("fixed_small", dict(learn_sigma=False, sigma_small=True)),
    ("fixed_large", dict(learn_sigma=False, sigma_small=False)),
])
@pytest.mark.parametrize("t", [1, 500, 999])
def test_ancestral_step_matches_ddpm_scheduler(variance_type, kwargs, t):
  d = create_diffusion("", **kwargs)
  rng = np.random.default_rng(t)
  x = rng.standard_normal(SHAPE).astype(np.float32)
  channels = 2 * SHAPE[-1] if kwargs["learn_sigma"] else SHAPE[-1]
  out = rng.uniform(-1, 1, SHAPE[:-1] + (channels,)).astype(np.float32)
  ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=variance_type,
                      clip_sample=False)
  generator = torch.Generator().manual_seed(t)
  step = ref.step(_nchw(out), t, _nchw(x), generator=generator)
  noise = _nhwc(torch.randn(_nchw(x).shape, generator=torch.Generator().manual_seed(t)))
  ours = d.p_sample(_const_model(out), x, np.full((2,), t), noise)
  np.testing.assert_allclose(ours["pred_xstart"], _nhwc(step.pred_original_sample), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours["sample"], _nhwc(step.prev_sample), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variance_type,kwargs", [
    ("learned_range", dict(learn_sigma=True)),
    ("fixed_small", dict(learn_sigma=False, sigma_small=True)),
])
@pytest.mark.parametrize("t", [1, 500, 999])
def test_velocity_prediction_matches_ddpm_scheduler(variance_type, kwargs, t):
  """predict_v: the training target is diffusers' get_velocity, and one ancestral step from a
  v output is DDPMScheduler's with prediction_type="v_prediction"."""
  d = create_diffusion("", predict_v=True, **kwargs)
  rng = np.random.default_rng(t)
  x0, noise, x = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3))
  ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=variance_type,
                      clip_sample=False, prediction_type="v_prediction")
  timesteps = np.full((2,), t)
  want = ref.get_velocity(_nchw(x0), _nchw(noise), torch.from_numpy(timesteps))
  np.testing.assert_allclose(d.velocity(x0, timesteps, noise), _nhwc(want), rtol=1e-5, atol=1e-5)
  channels = 2 * SHAPE[-1] if kwargs["learn_sigma"] else SHAPE[-1]
  out = rng.uniform(-1, 1, SHAPE[:-1] + (channels,)).astype(np.float32)
  step = ref.step(_nchw(out), t, _nchw(x), generator=torch.Generator().manual_seed(t))
  noise = _nhwc(torch.randn(_nchw(x).shape, generator=torch.Generator().manual_seed(t)))
  ours = d.p_sample(_const_model(out), x, timesteps, noise)
  np.testing.assert_allclose(ours["pred_xstart"], _nhwc(step.pred_original_sample), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours["sample"], _nhwc(step.prev_sample), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("index", [0, 10, 49])
def test_ddim_step_matches_ddim_scheduler(eta, index):
  d = create_diffusion("ddim50", learn_sigma=False)
  ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                      set_alpha_to_one=True)
  ref.set_timesteps(50)
  original_t = int(d.timestep_map[index])
  assert original_t in ref.timesteps.tolist()
  rng = np.random.default_rng(index)
  x = rng.standard_normal(SHAPE).astype(np.float32)
  eps = rng.standard_normal(SHAPE).astype(np.float32)
  noise = rng.standard_normal(SHAPE).astype(np.float32)
  step = ref.step(_nchw(eps), original_t, _nchw(x), eta=eta, variance_noise=_nchw(noise))
  ours = d.ddim_sample(_const_model(eps), x, np.full((2,), index), noise, eta=eta)
  np.testing.assert_allclose(ours["sample"], _nhwc(step.prev_sample), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours["pred_xstart"], _nhwc(step.pred_original_sample), rtol=1e-4, atol=1e-4)
