"""Noise schedules (betas) in float64, as the IDDPM/ADM code used by DiT builds them."""
import math

import numpy as np

LINEAR = "linear"
COSINE = "cosine"
SCHEDULES = (LINEAR, COSINE)

# Linear schedule endpoints for 1000 steps (DDPM); other step counts scale them by 1000 / T.
_LINEAR_BETA_START = 0.0001
_LINEAR_BETA_END = 0.02
# Cosine schedule (Nichol & Dhariwal 2021): offset s and the cap on any beta.
_COSINE_OFFSET = 0.008
_COSINE_MAX_BETA = 0.999


def _cosine_alpha_bar(t: float) -> float:
  return math.cos((t + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar, max_beta: float = _COSINE_MAX_BETA):
  """Betas that discretize a continuous alpha_bar(t), t in [0, 1], capped at ``max_beta``."""
  betas = []
  for i in range(num_diffusion_timesteps):
    t1 = i / num_diffusion_timesteps
    t2 = (i + 1) / num_diffusion_timesteps
    betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
  return np.array(betas, dtype=np.float64)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
  """Float64 betas of the named schedule ("linear" or "cosine") for ``num_diffusion_timesteps``.

  The linear schedule is scaled by 1000 / T so that any T approximates the same continuous process.
  """
  if schedule_name == LINEAR:
    scale = 1000 / num_diffusion_timesteps
    return np.linspace(scale * _LINEAR_BETA_START, scale * _LINEAR_BETA_END,
                       num_diffusion_timesteps, dtype=np.float64)
  if schedule_name == COSINE:
    return betas_for_alpha_bar(num_diffusion_timesteps, _cosine_alpha_bar)
  raise ValueError(f"unknown noise_schedule {schedule_name!r}: set config.diffusion.noise_schedule "
                   f"to one of {SCHEDULES}.")
