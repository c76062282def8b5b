"""Ancestral (DDPM) and DDIM steps and their loops for GaussianDiffusion (a mixin).

Single steps take the Gaussian noise explicitly, so they are pure. The loops run the steps with
``lax.scan`` (traced and compiled once, whatever the number of steps) and draw per-step noise from
``jax.random.split(rng, num_timesteps)[k]`` for the k-th step (k = 0 is t = num_timesteps - 1).
The public loops are jitted with the diffusion, ``model_fn`` and ``clip_denoised`` static: pass
arrays (parameters, labels) through ``model_kwargs`` so a new call reuses the compiled loop.
"""
import functools

import jax
import jax.numpy as jnp

_STATIC = ("self", "model_fn", "clip_denoised")


def _nonzero_mask(t, ndim):
  t = jnp.asarray(t)
  return (t != 0).astype(jnp.float32).reshape(t.shape + (1,) * (ndim - t.ndim))


class GaussianSampling:
  """Sampling methods; the class using it provides p_mean_variance, extract and the tables."""

  def p_sample(self, model_fn, x, t, noise, clip_denoised=False, model_kwargs=None):
    """One ancestral step x_t -> x_{t-1}; noise is added only where t != 0.

    Returns dict(sample, pred_xstart).
    """
    out = self.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
    sample = out["mean"] + _nonzero_mask(t, x.ndim) * jnp.exp(0.5 * out["log_variance"]) * noise
    return dict(sample=sample, pred_xstart=out["pred_xstart"])

  def ddim_sample(self, model_fn, x, t, noise, eta=0.0, clip_denoised=False, model_kwargs=None):
    """One DDIM step x_t -> x_{t-1} with stochasticity ``eta`` (0 = deterministic DDIM).

    sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev).
    Returns dict(sample, pred_xstart).
    """
    out = self.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
    eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = self.extract("alphas_cumprod", t, x.ndim)
    alpha_bar_prev = self.extract("alphas_cumprod_prev", t, x.ndim)
    sigma = (eta * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
             * jnp.sqrt(1 - alpha_bar / alpha_bar_prev))
    mean_pred = (out["pred_xstart"] * jnp.sqrt(alpha_bar_prev)
                 + jnp.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps)
    sample = mean_pred + _nonzero_mask(t, x.ndim) * sigma * noise
    return dict(sample=sample, pred_xstart=out["pred_xstart"])

  def ddim_reverse_sample(self, model_fn, x, t, clip_denoised=False, model_kwargs=None):
    """One deterministic DDIM inversion step x_t -> x_{t+1}. Returns dict(sample, pred_xstart)."""
    out = self.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
    eps = ((self.extract("sqrt_recip_alphas_cumprod", t, x.ndim) * x - out["pred_xstart"])
           / self.extract("sqrt_recipm1_alphas_cumprod", t, x.ndim))
    alpha_bar_next = self.extract("alphas_cumprod_next", t, x.ndim)
    sample = out["pred_xstart"] * jnp.sqrt(alpha_bar_next) + jnp.sqrt(1 - alpha_bar_next) * eps
    return dict(sample=sample, pred_xstart=out["pred_xstart"])

  # ---------------------------------------------------------------- loops (traceable)

  def _scan_steps(self, step, x, rng, reverse=True):
    """Runs ``step(x, t, noise) -> x`` over all steps (t descending if ``reverse``) with lax.scan."""
    n = self.num_timesteps
    indices = jnp.arange(n - 1, -1, -1) if reverse else jnp.arange(n)
    keys = jax.random.split(rng, n)
    x = jnp.asarray(x, jnp.float32)

    def body(x, inputs):
      i, key = inputs
      t = jnp.full(x.shape[:1], i, jnp.int32)
      return step(x, t, jax.random.normal(key, x.shape, jnp.float32)), None

    x, _ = jax.lax.scan(body, x, (indices, keys))
    return x

  def p_sample_loop_fn(self, model_fn, noise, rng, clip_denoised=False, model_kwargs=None):
    """Traceable ancestral sampling from x_T = ``noise``; returns x_0 (float32)."""
    def step(x, t, z):
      return self.p_sample(model_fn, x, t, z, clip_denoised, model_kwargs)["sample"]
    return self._scan_steps(step, noise, rng)

  def ddim_sample_loop_fn(self, model_fn, noise, rng, eta=0.0, clip_denoised=False, model_kwargs=None):
    """Traceable DDIM sampling from x_T = ``noise``; ``rng`` is used only when eta > 0."""
    def step(x, t, z):
      return self.ddim_sample(model_fn, x, t, z, eta, clip_denoised, model_kwargs)["sample"]
    return self._scan_steps(step, noise, rng)

  def ddim_reverse_sample_loop_fn(self, model_fn, x_start, clip_denoised=False, model_kwargs=None):
    """Traceable deterministic DDIM encoding x_0 -> x_T."""
    def step(x, t, _):
      return self.ddim_reverse_sample(model_fn, x, t, clip_denoised, model_kwargs)["sample"]
    return self._scan_steps(step, x_start, jax.random.key(0), reverse=False)

  # ---------------------------------------------------------------- loops (jitted)

  p_sample_loop = functools.partial(jax.jit, static_argnames=_STATIC)(p_sample_loop_fn)
  ddim_sample_loop = functools.partial(jax.jit, static_argnames=_STATIC)(ddim_sample_loop_fn)
  ddim_reverse_sample_loop = functools.partial(jax.jit, static_argnames=_STATIC)(
      ddim_reverse_sample_loop_fn)
