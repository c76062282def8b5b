"""Shared pieces of the brief-training tests of the built-in defaults (digits, video, text).

The video and text defaults cannot draw samples after a brief run, so their tests judge learning
on the denoiser: clean test inputs noised to t = DENOISE_T and denoised in one step by the closed
form of the forward process (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) for a noise
prediction, x0 = sqrt(abar) x_t - sqrt(1 - abar) v for a velocity prediction) must come back
closer to the originals, and score better, than with an untrained model.
"""
import jax
import numpy as np

from dit_jax import diffusion
from dit_jax import train_state as ts

DENOISE_T = 250


def brief_config(config, steps: int, grid_steps: int | None = None, batch_size: int | None = 64,
                 warmup_steps: int = 30, log_windows: int = 3):
  """``config`` shortened to ``steps`` of ``batch_size`` (None: the config's): one checkpoint and
  one scored sample grid (``grid_steps`` sampler steps; None: the config's) at the end,
  ``log_windows`` log windows, EMA that follows the weights."""
  config.num_train_steps = steps
  if batch_size is not None:
    config.global_batch_size = batch_size
  config.checkpoint_every_steps = steps
  config.sample_every_steps = steps
  if grid_steps is not None:
    config.sample_grid_steps = grid_steps
  config.log_every_steps = steps // log_windows
  config.warmup_steps = warmup_steps
  config.ema_decay = 0.9  # the default's EMA averages over more steps than a brief run has
  return config


def one_step_denoised(config, params, clean: np.ndarray, y, **model_kwargs) -> np.ndarray:
  """``clean`` (first channel in [-1, 1]) noised to DENOISE_T with fixed noise and denoised in
  one step by the model with ``params``, labels ``y`` and ``model_kwargs``; clipped to [-1, 1]."""
  model = ts.build_model(config)
  alpha_bar = float(diffusion.create_objective(config.diffusion).alphas_cumprod[DENOISE_T])
  noise = np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
  noisy = np.sqrt(alpha_bar) * clean + np.sqrt(1 - alpha_bar) * noise
  t = np.full(len(clean), DENOISE_T)
  out = jax.jit(model.apply)({"params": params}, noisy, t, y, **model_kwargs)
  prediction = np.asarray(out)[..., :1]
  if config.diffusion.get("predict_v", False):
    x0 = np.sqrt(alpha_bar) * noisy - np.sqrt(1 - alpha_bar) * prediction
  else:
    x0 = (noisy - np.sqrt(1 - alpha_bar) * prediction) / np.sqrt(alpha_bar)
  return np.clip(x0, -1, 1)
