"""One switch (``config.diffusion.objective``) picks Gaussian diffusion or flow matching.

``create_objective(cfg)`` returns the training objective (``sample_timesteps`` and
``training_losses``); ``sample(cfg, ...)`` runs the matching jitted sampler, with optional
classifier-free guidance.
"""
import functools

import jax
import jax.numpy as jnp

from dit_jax.diffusion import flow, gaussian, guidance, schedules

GAUSSIAN = "gaussian"
FLOW = "flow"
OBJECTIVES = (GAUSSIAN, FLOW)
SAMPLERS = {GAUSSIAN: ("ddpm", "ddim"), FLOW: ("euler", "heun", "euler_maruyama")}

# Defaults of config.diffusion fields a config may leave out (those of the official DiT).
_DEFAULTS = dict(
    objective=GAUSSIAN, noise_schedule=schedules.LINEAR, diffusion_steps=1000, learn_sigma=True,
    predict_xstart=False, sigma_small=False, rescale_learned_sigmas=False, use_kl=False,
    timestep_respacing="", min_snr_gamma=0.0, predict_v=False,
    t_sampling=flow.UNIFORM, logit_mean=0.0, logit_std=1.0, time_shift=1.0)


def _field(cfg, name):
  getter = getattr(cfg, "get", None)
  value = getter(name, None) if getter is not None else getattr(cfg, name, None)
  return _DEFAULTS[name] if value is None else value


def _objective_name(cfg) -> str:
  name = _field(cfg, "objective")
  if name not in OBJECTIVES:
    raise ValueError(f"config.diffusion.objective={name!r} is not supported; use one of {OBJECTIVES}.")
  return name


def create_objective(diffusion_cfg, timestep_respacing=None):
  """The objective named by ``diffusion_cfg.objective``: a GaussianDiffusion or a FlowMatching.

  Both have ``sample_timesteps(rng, batch_size)`` and
  ``training_losses(model_fn, x_start, t, model_kwargs=None, noise=None, rng=None)`` -> dict with
  per-example ``loss`` and ``mse`` (and ``vb`` for Gaussian). ``timestep_respacing`` overrides
  the config's (Gaussian only; training uses "" as DiT does).
  """
  if _objective_name(diffusion_cfg) == FLOW:
    if _field(diffusion_cfg, "min_snr_gamma"):
      raise ValueError(
          f"config.diffusion.min_snr_gamma={_field(diffusion_cfg, 'min_snr_gamma')} weights the "
          "Gaussian objective's loss; flow matching shapes training with t_sampling / logit_mean / "
          "logit_std instead: set min_snr_gamma=0.")
    for target in ("predict_xstart", "predict_v"):
      if _field(diffusion_cfg, target):
        raise ValueError(
            f"config.diffusion.{target}=True picks the Gaussian objective's target; flow matching "
            f"always predicts its velocity (noise - data): set {target}=False, or "
            "objective='gaussian'.")
    return flow.FlowMatching(
        t_sampling=_field(diffusion_cfg, "t_sampling"),
        logit_mean=float(_field(diffusion_cfg, "logit_mean")),
        logit_std=float(_field(diffusion_cfg, "logit_std")),
        time_shift=float(_field(diffusion_cfg, "time_shift")))
  if timestep_respacing is None:
    timestep_respacing = _field(diffusion_cfg, "timestep_respacing")
  return gaussian.create_diffusion(
      timestep_respacing=timestep_respacing,
      noise_schedule=_field(diffusion_cfg, "noise_schedule"),
      use_kl=bool(_field(diffusion_cfg, "use_kl")),
      sigma_small=bool(_field(diffusion_cfg, "sigma_small")),
      predict_xstart=bool(_field(diffusion_cfg, "predict_xstart")),
      learn_sigma=bool(_field(diffusion_cfg, "learn_sigma")),
      rescale_learned_sigmas=bool(_field(diffusion_cfg, "rescale_learned_sigmas")),
      diffusion_steps=int(_field(diffusion_cfg, "diffusion_steps")),
      min_snr_gamma=float(_field(diffusion_cfg, "min_snr_gamma")),
      predict_v=bool(_field(diffusion_cfg, "predict_v")))


@functools.partial(jax.jit, static_argnames=(
    "objective", "model_fn", "sampler", "num_steps", "guided", "guidance_channels",
    "clip_denoised"))
def _sample(objective, model_fn, sampler, num_steps, guided, guidance_channels, clip_denoised,
            noise, rng, model_kwargs, cfg_scale, null_label, guidance_interval, eta, diffusion_scale):
  if guided:
    model_fn = guidance.guided_model_fn(model_fn, cfg_scale, null_label, guidance_channels,
                                        guidance_interval)
  if sampler == "ddpm":
    return objective.p_sample_loop_fn(model_fn, noise, rng, clip_denoised, model_kwargs)
  if sampler == "ddim":
    return objective.ddim_sample_loop_fn(model_fn, noise, rng, eta, clip_denoised, model_kwargs)
  if sampler == "euler":
    return objective.euler_sample_loop_fn(model_fn, noise, num_steps, model_kwargs)
  if sampler == "heun":
    return objective.heun_sample_loop_fn(model_fn, noise, num_steps, model_kwargs)
  return objective.euler_maruyama_sample_loop_fn(model_fn, noise, rng, num_steps, diffusion_scale,
                                                 model_kwargs)


def sample(diffusion_cfg, model_fn, noise, rng, *, sampler, num_steps, model_kwargs=None,
           cfg_scale=1.0, null_label=None, guidance_channels=guidance.OFFICIAL_GUIDANCE_CHANNELS,
           guidance_interval=None, eta=0.0, clip_denoised=False, diffusion_scale=1.0,
           timestep_respacing=None):
  """Draws samples from x_T = ``noise`` (NHWC) with the objective of ``diffusion_cfg``; jitted.

  Args:
    diffusion_cfg: ``config.diffusion`` (ConfigDict or dict).
    model_fn: ``model_fn(x, t, **model_kwargs)``; static under jit (hashed by identity), so pass a
      long-lived function and give it parameters and labels through ``model_kwargs``.
    noise: the initial noise, float32 NHWC; may be sharded over the batch axis.
    rng: PRNG key for the per-step noise (unused by ddim with eta=0, euler and heun).
    sampler: "ddpm" | "ddim" (Gaussian) or "euler" | "heun" | "euler_maruyama" (flow).
    num_steps: sampling steps; Gaussian samplers respace to str(num_steps) as DiT's sample.py does
      unless ``timestep_respacing`` is given ("ddim50", "20,10,5" ...).
    model_kwargs: pytree of model arguments (traced); ``y`` holds labels for guidance.
    cfg_scale: classifier-free guidance scale; 1.0 (or None) runs the model unguided.
    null_label: the null class (num_classes); required when guiding.
    guidance_channels: 3 (official) or None (all prediction channels); see guidance.py.
    guidance_interval: optional (lo, hi) range of model timesteps where guidance applies.
    eta: DDIM stochasticity. clip_denoised: clip predicted x_0 to [-1, 1] (Gaussian).
    diffusion_scale: Euler–Maruyama diffusion strength c (g(t)^2 = 2 c t).

  Returns:
    float32 samples shaped like ``noise``.
  """
  name = _objective_name(diffusion_cfg)
  if sampler not in SAMPLERS[name]:
    raise ValueError(f"sampler {sampler!r} does not apply to objective {name!r}; use one of "
                     f"{SAMPLERS[name]} or set config.diffusion.objective accordingly.")
  if name == GAUSSIAN:
    objective = create_objective(diffusion_cfg, timestep_respacing or str(num_steps))
  else:
    objective = create_objective(diffusion_cfg)
  guided = cfg_scale is not None and cfg_scale != 1.0
  if guided and null_label is None:
    raise ValueError("classifier-free guidance needs null_label= (the model's num_classes).")
  interval = None if guidance_interval is None else tuple(jnp.float32(v) for v in guidance_interval)
  return _sample(objective, model_fn, sampler, int(num_steps), guided, guidance_channels,
                 bool(clip_denoised), noise, rng, model_kwargs or {}, jnp.float32(cfg_scale or 1.0),
                 jnp.int32(0 if null_label is None else null_label), interval, jnp.float32(eta),
                 jnp.float32(diffusion_scale))
