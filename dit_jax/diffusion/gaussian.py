"""Gaussian diffusion exactly as the IDDPM/ADM code used by DiT, as an immutable, hashable object.

Tables are float64 numpy arrays built once at construction; a lookup casts the looked-up entries to
float32 (elementwise, so the same numbers the reference gets by indexing in float64 and calling
``.float()``). Arrays are NHWC: the model output's learned variance is the second half of the
LAST axis. Every method is a pure function of its arguments; the object can be a static argument
of ``jax.jit`` (it hashes by its settings).

Indices ``t`` are positions in the (possibly respaced) process, 0..num_timesteps-1; the model is
always called as ``model_fn(x_t, timestep_map[t], **model_kwargs)`` with the original timesteps.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion import gaussian_sampling, losses, respace, schedules

# What the model predicts (model_mean_type): the noise, the clean input, or the velocity
# v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022; diffusers' "v_prediction").
EPSILON = "epsilon"
START_X = "start_x"
VELOCITY = "velocity"
MEAN_TYPES = (EPSILON, START_X, VELOCITY)
# The reverse-process variance (model_var_type).
LEARNED_RANGE = "learned_range"
FIXED_LARGE = "fixed_large"
FIXED_SMALL = "fixed_small"
VAR_TYPES = (LEARNED_RANGE, FIXED_LARGE, FIXED_SMALL)
# The training objective (loss_type).
MSE = "mse"                    # MSE (+ vb with a learned variance)
RESCALED_MSE = "rescaled_mse"  # as MSE, vb multiplied by num_timesteps / 1000
RESCALED_KL = "rescaled_kl"    # the variational bound alone, multiplied by num_timesteps
LOSS_TYPES = (MSE, RESCALED_MSE, RESCALED_KL)

# Tables derived from the betas (all float64, one entry per step of the respaced process).
TABLE_NAMES = (
    "betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next",
    "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "fixed_large_variance", "fixed_large_log_variance")


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not supported; use one of {choices}.")


def _build_tables(betas: np.ndarray) -> dict:
  """Every float64 table of the reference GaussianDiffusion.__init__, from the betas."""
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas, axis=0)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # Entry 0 of the posterior variance is 0; its log is clipped by copying entry 1.
  clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else posterior_variance
  fixed_large = np.append(posterior_variance[1], betas[1:]) if len(betas) > 1 else betas
  return dict(
      betas=betas,
      log_betas=np.log(betas),
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      alphas_cumprod_next=np.append(alphas_cumprod[1:], 0.0),
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=np.log(clipped),
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
      fixed_large_variance=fixed_large,
      fixed_large_log_variance=np.log(fixed_large),
  )


def _read_only(array: np.ndarray) -> np.ndarray:
  array = np.array(array)
  array.flags.writeable = False
  return array


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion(gaussian_sampling.GaussianSampling):
  """A (respaced) Gaussian diffusion process; see ``create_diffusion`` for the usual constructor.

  Attributes (besides the settings): ``num_timesteps``, ``original_num_steps``, ``timestep_map``
  (int64, respaced index -> original timestep) and the float64 tables of ``TABLE_NAMES``.
  """
  noise_schedule: str = schedules.LINEAR
  diffusion_steps: int = 1000
  timestep_respacing: str = ""
  model_mean_type: str = EPSILON
  model_var_type: str = LEARNED_RANGE
  loss_type: str = MSE
  min_snr_gamma: float = 0.0

  def __post_init__(self):
    _check_choice("model_mean_type", self.model_mean_type, MEAN_TYPES)
    _check_choice("model_var_type", self.model_var_type, VAR_TYPES)
    _check_choice("loss_type", self.loss_type, LOSS_TYPES)
    if self.min_snr_gamma < 0 or (self.min_snr_gamma and self.loss_type == RESCALED_KL):
      raise ValueError(
          f"min_snr_gamma={self.min_snr_gamma} (config.diffusion.min_snr_gamma): use 0 (off) or a "
          "positive gamma such as 5, and only with the MSE loss (it weights the mse term; use_kl "
          "trains on the bound alone).")
    base_betas = schedules.get_named_beta_schedule(self.noise_schedule, self.diffusion_steps)
    if not ((base_betas > 0).all() and (base_betas <= 1).all()):
      raise ValueError(
          f"the {self.noise_schedule} schedule with diffusion_steps={self.diffusion_steps} has betas "
          "outside (0, 1]; use more diffusion_steps (the linear schedule needs at least 20).")
    base_alphas_cumprod = np.cumprod(1.0 - base_betas)
    kept = respace.space_timesteps(self.diffusion_steps, self.timestep_respacing)
    tables = _build_tables(respace.respace_betas(base_alphas_cumprod, kept))
    tables["timestep_map"] = np.asarray(kept, dtype=np.int64)
    for name, table in tables.items():
      object.__setattr__(self, name, _read_only(table))
    object.__setattr__(self, "num_timesteps", len(kept))
    object.__setattr__(self, "original_num_steps", self.diffusion_steps)

  @property
  def learn_sigma(self) -> bool:
    return self.model_var_type == LEARNED_RANGE

  # ---------------------------------------------------------------- lookups and the model call

  def extract(self, name: str, t, ndim: int):
    """Entries ``t`` of table ``name`` as float32, shaped (B, 1, ..., 1) to broadcast on rank ``ndim``."""
    values = jnp.asarray(getattr(self, name).astype(np.float32))[jnp.asarray(t)]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))

  def min_snr_weight(self, t):
    """Min-SNR-gamma loss weight of timesteps ``t`` (Hang et al. 2023, "Efficient Diffusion
    Training via Min-SNR Weighting Strategy"), float32 (B,): min(SNR, gamma) / SNR for an eps
    target, min(SNR, gamma) for an x_0 target and min(SNR, gamma) / (SNR + 1) for a velocity
    target, SNR = abar / (1 - abar). It caps the weight of the nearly clean, easy timesteps
    whose gradients dominate and conflict with the rest."""
    alpha_bar = self.extract("alphas_cumprod", t, 1)
    snr = alpha_bar / (1.0 - alpha_bar)
    capped = jnp.minimum(snr, self.min_snr_gamma)
    return capped / {EPSILON: snr, START_X: 1.0, VELOCITY: snr + 1.0}[self.model_mean_type]

  def model_output(self, model_fn, x, t, model_kwargs=None):
    """``model_fn(x, timestep_map[t], **model_kwargs)`` as float32, channel count checked."""
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    timesteps = jnp.asarray(self.timestep_map.astype(np.int32))[t]
    out = model_fn(x, timesteps, **(model_kwargs or {}))
    channels = x.shape[-1] * (2 if self.learn_sigma else 1)
    if out.shape != x.shape[:-1] + (channels,):
      raise ValueError(
          f"model output shape {out.shape} does not fit x {x.shape} with model_var_type="
          f"{self.model_var_type!r}: it needs {channels} channels (mean, then variance when "
          "learned). Make the model's learn_sigma match config.diffusion.learn_sigma.")
    return out.astype(jnp.float32)

  # ---------------------------------------------------------------- forward process

  def q_mean_variance(self, x_start, t):
    """Mean, variance and log variance of q(x_t | x_0)."""
    mean = self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
    variance = 1.0 - self.extract("alphas_cumprod", t, x_start.ndim)
    return mean, variance, self.extract("log_one_minus_alphas_cumprod", t, x_start.ndim)

  def q_sample(self, x_start, t, noise):
    """Samples x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given noise."""
    return (self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise)

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
    n = x_t.ndim
    mean = (self.extract("posterior_mean_coef1", t, n) * x_start
            + self.extract("posterior_mean_coef2", t, n) * x_t)
    return (mean, self.extract("posterior_variance", t, n),
            self.extract("posterior_log_variance_clipped", t, n))

  # ---------------------------------------------------------------- reverse process

  def predict_xstart_from_eps(self, x_t, t, eps):
    return (self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps)

  def predict_xstart_from_v(self, x_t, t, v):
    """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v, from x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps."""
    return (self.extract("sqrt_alphas_cumprod", t, x_t.ndim) * x_t
            - self.extract("sqrt_one_minus_alphas_cumprod", t, x_t.ndim) * v)

  def velocity(self, x_start, t, noise):
    """The velocity target v = sqrt(abar) eps - sqrt(1 - abar) x_0 of x_t = q_sample(x_start, t, noise)."""
    return (self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * noise
            - self.extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * x_start)

  def predict_eps_from_xstart(self, x_t, t, pred_xstart):
    return ((self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t - pred_xstart)
            / self.extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim))

  def p_mean_variance_from_output(self, model_output, x, t, clip_denoised=False):
    """p(x_{t-1} | x_t) from a model output already computed (float32, NHWC).

    Returns dict(mean, variance, log_variance, pred_xstart).
    """
    n = x.ndim
    if self.learn_sigma:
      model_output, var_values = jnp.split(model_output, 2, axis=-1)
      min_log = self.extract("posterior_log_variance_clipped", t, n)
      max_log = self.extract("log_betas", t, n)
      frac = (var_values + 1) / 2
      log_variance = frac * max_log + (1 - frac) * min_log
      variance = jnp.exp(log_variance)
    else:
      if self.model_var_type == FIXED_LARGE:
        names = ("fixed_large_variance", "fixed_large_log_variance")
      else:
        names = ("posterior_variance", "posterior_log_variance_clipped")
      variance = jnp.broadcast_to(self.extract(names[0], t, n), x.shape)
      log_variance = jnp.broadcast_to(self.extract(names[1], t, n), x.shape)
    if self.model_mean_type == START_X:
      pred_xstart = model_output
    elif self.model_mean_type == VELOCITY:
      pred_xstart = self.predict_xstart_from_v(x, t, model_output)
    else:
      pred_xstart = self.predict_xstart_from_eps(x, t, model_output)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return dict(mean=mean, variance=variance, log_variance=log_variance, pred_xstart=pred_xstart)

  def p_mean_variance(self, model_fn, x, t, clip_denoised=False, model_kwargs=None):
    """Calls the model and returns dict(mean, variance, log_variance, pred_xstart) of p(x_{t-1}|x_t)."""
    out = self.model_output(model_fn, x, t, model_kwargs)
    return self.p_mean_variance_from_output(out, x, t, clip_denoised)

  # ---------------------------------------------------------------- training

  def sample_timesteps(self, rng, batch_size: int):
    """Training timesteps: int32 uniform over 0..num_timesteps-1, one per example."""
    return jax.random.randint(rng, (batch_size,), 0, self.num_timesteps, dtype=jnp.int32)

  def vb_terms_bpd(self, model_output, x_start, x_t, t):
    """Per-example variational-bound term in bits per dimension.

    KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the discretized Gaussian decoder NLL
    at t = 0, averaged over H, W, C.
    """
    true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=False)
    kl = losses.normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
    kl = losses.mean_flat(kl) / math.log(2.0)
    decoder_nll = -losses.discretized_gaussian_log_likelihood(
        x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
    decoder_nll = losses.mean_flat(decoder_nll) / math.log(2.0)
    return jnp.where(jnp.asarray(t) == 0, decoder_nll, kl)

  def training_losses(self, model_fn, x_start, t, model_kwargs=None, noise=None, rng=None):
    """Per-example training losses, dict(loss, mse, vb), each float32 of shape (B,).

    ``mse`` regresses the model mean output (eps, x_0 with predict_xstart, or v with
    predict_v) on its target.
    With a learned variance ``vb`` is the bound term computed with the mean output
    stop-gradiented (so vb trains only the variance), scaled by num_timesteps / 1000 for
    rescale_learned_sigmas, and loss = mse + vb. For use_kl, loss = vb * num_timesteps (mse is
    then only reported). With a fixed variance and MSE, vb is zero and loss = mse. With
    ``min_snr_gamma`` > 0 the mse term of the loss is multiplied by ``min_snr_weight(t)`` (the
    reported ``mse`` stays unweighted; vb is not weighted).

    Args:
      model_fn: ``model_fn(x_t, timesteps, **model_kwargs)`` -> NHWC output.
      x_start: clean inputs x_0, NHWC.
      t: int indices 0..num_timesteps-1, shape (B,).
      model_kwargs: extra model arguments (e.g. ``y``).
      noise: the Gaussian noise of q_sample; drawn from ``rng`` when None.
      rng: PRNG key, used only when ``noise`` is None.
    """
    if noise is None:
      if rng is None:
        raise ValueError("training_losses needs noise= (an array like x_start) or rng= (a PRNG key).")
      noise = jax.random.normal(rng, x_start.shape, jnp.float32)
    x_t = self.q_sample(x_start, t, noise)
    output = self.model_output(model_fn, x_t, t, model_kwargs)
    mean_output = output[..., :x_start.shape[-1]]
    if self.model_mean_type == VELOCITY:
      target = self.velocity(x_start, t, noise)
    else:
      target = noise if self.model_mean_type == EPSILON else x_start
    mse = losses.mean_flat(jnp.square(target - mean_output))
    mse_term = self.min_snr_weight(t) * mse if self.min_snr_gamma else mse
    if self.loss_type == RESCALED_KL:
      vb = self.vb_terms_bpd(output, x_start, x_t, t)
      loss = vb * self.num_timesteps
    elif self.learn_sigma:
      frozen = jnp.concatenate(
          [jax.lax.stop_gradient(mean_output), output[..., x_start.shape[-1]:]], axis=-1)
      vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
      if self.loss_type == RESCALED_MSE:
        vb = vb * (self.num_timesteps / 1000.0)
      loss = mse_term + vb
    else:
      vb = jnp.zeros_like(mse)
      loss = mse_term
    return dict(loss=loss, mse=mse, vb=vb)


def create_diffusion(timestep_respacing="", noise_schedule=schedules.LINEAR, use_kl=False,
                     sigma_small=False, predict_xstart=False, learn_sigma=True,
                     rescale_learned_sigmas=False, diffusion_steps=1000,
                     min_snr_gamma=0.0, predict_v=False) -> GaussianDiffusion:
  """The official DiT ``create_diffusion``: same arguments, same process. Not in the official
  code: ``min_snr_gamma`` > 0 weights the training loss's mse term by Min-SNR-gamma, and
  ``predict_v`` makes the model predict the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0
  (Salimans & Ho 2022), whose target is the noise near t = 0 and -x_0 near t = T, so that no
  timestep asks the network to copy its input to its output.

  ``timestep_respacing`` is a respacing string ("", "250", "20,10,5", "ddim50") or a list of
  section counts; None or "" keeps all ``diffusion_steps`` steps.
  """
  if isinstance(timestep_respacing, (list, tuple)):
    timestep_respacing = ",".join(str(int(c)) for c in timestep_respacing)
  if predict_xstart and predict_v:
    raise ValueError("predict_xstart=True and predict_v=True (config.diffusion) ask for two model "
                     "targets; set at most one (both False: the paper's noise prediction).")
  if use_kl:
    loss_type = RESCALED_KL
  elif rescale_learned_sigmas:
    loss_type = RESCALED_MSE
  else:
    loss_type = MSE
  if learn_sigma:
    var_type = LEARNED_RANGE
  else:
    var_type = FIXED_SMALL if sigma_small else FIXED_LARGE
  return GaussianDiffusion(
      noise_schedule=noise_schedule,
      diffusion_steps=int(diffusion_steps),
      timestep_respacing=timestep_respacing or "",
      model_mean_type=START_X if predict_xstart else VELOCITY if predict_v else EPSILON,
      model_var_type=var_type,
      loss_type=loss_type,
      min_snr_gamma=float(min_snr_gamma))
