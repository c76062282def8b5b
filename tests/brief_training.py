"""Shared pieces of the brief-training tests of the built-in defaults (digits, video, text).

The video and text defaults cannot draw samples after a brief run, so their tests judge learning
on the denoiser: clean test inputs noised to t = DENOISE_T and denoised in one step by the closed
form of the forward process (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) for a noise
prediction, x0 = sqrt(abar) x_t - sqrt(1 - abar) v for a velocity prediction; under flow matching
x_t = (1 - t) x0 + t eps at t = FLOW_T, the same signal-to-noise ratio 1, and x0 = x_t - t v) must
come back closer to the originals, and score better, than with an untrained model.
"""
import jax
import numpy as np

from dit_jax import diffusion
from dit_jax import train_state as ts

DENOISE_T = 250  # Gaussian diffusion: alpha-bar 0.52 on the linear schedule, SNR ~1
FLOW_T = 0.5  # flow matching: (1 - t) / t = 1


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
  """``clean`` (first channel in [-1, 1]) noised to DENOISE_T (FLOW_T under flow matching) with
  fixed noise and denoised in one step by the model with ``params``, labels ``y`` and
  ``model_kwargs``; clipped to [-1, 1]."""
  model = ts.build_model(config)
  objective = diffusion.create_objective(config.diffusion)
  noise = np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
  apply = lambda x, t: np.asarray(jax.jit(model.apply)({"params": params}, x, t, y, **model_kwargs))
  if config.diffusion.get("objective", "gaussian") == "flow":
    noisy = (1 - FLOW_T) * clean + FLOW_T * noise
    v = apply(noisy, np.full(len(clean), FLOW_T * objective.time_scale, np.float32))
    return np.clip(noisy - FLOW_T * v, -1, 1)
  alpha_bar = float(objective.alphas_cumprod[DENOISE_T])
  noisy = np.sqrt(alpha_bar) * clean + np.sqrt(1 - alpha_bar) * noise
  prediction = apply(noisy, np.full(len(clean), DENOISE_T))[..., :1]
  if config.diffusion.get("predict_v", False):
    x0 = np.sqrt(alpha_bar) * noisy - np.sqrt(1 - alpha_bar) * prediction
  else:
    x0 = (noisy - np.sqrt(1 - alpha_bar) * prediction) / np.sqrt(alpha_bar)
  return np.clip(x0, -1, 1)
