"""Pure-functional diffusion for DiT: Gaussian diffusion as the released code, flow matching, CFG.

- ``create_diffusion(...)``: the official DiT constructor -> GaussianDiffusion (gaussian.py).
- ``create_objective(config.diffusion)``: Gaussian diffusion or flow matching by
  ``config.diffusion.objective``; both have ``sample_timesteps`` and ``training_losses``.
- ``sample(config.diffusion, model_fn, noise, rng, sampler=..., num_steps=...)``: jitted sampling.
"""
from dit_jax.diffusion.flow import FlowMatching
from dit_jax.diffusion.gaussian import GaussianDiffusion, create_diffusion
from dit_jax.diffusion.guidance import apply_guidance, guided_model_fn
from dit_jax.diffusion.objective import FLOW, GAUSSIAN, OBJECTIVES, SAMPLERS, create_objective, sample
from dit_jax.diffusion.respace import space_timesteps
from dit_jax.diffusion.schedules import get_named_beta_schedule

__all__ = [
    "FLOW", "GAUSSIAN", "OBJECTIVES", "SAMPLERS", "FlowMatching", "GaussianDiffusion",
    "apply_guidance", "create_diffusion", "create_objective", "get_named_beta_schedule",
    "guided_model_fn", "sample", "space_timesteps",
]
