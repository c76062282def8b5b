"""Flow matching / rectified flow on the DiT backbone (as SiT and SD3 train it).

Convention: t in [0, 1] with t = 0 data and t = 1 noise; the linear interpolant is
x_t = (1 - t) x_0 + t eps and the model regresses the velocity dx_t/dt = eps - x_0 (MSE averaged
over H, W, C). Use the backbone with ``learn_sigma=False``: it outputs C channels.

Timestep scale: the model is called as ``model_fn(x_t, t * time_scale, **model_kwargs)`` with
``time_scale = 1000`` by default, so the DiT sinusoidal timestep embedder sees the same 0..1000
range as in Gaussian diffusion (SiT passes the raw t in [0, 1]; set time_scale=1 for that).

Training times are uniform or logit-normal (SD3: sigmoid of N(logit_mean, logit_std^2)), then
optionally shifted to more noise with SD3's resolution shift t' = s t / (1 + (s - 1) t)
(``time_shift`` = s, e.g. sqrt(pixels / base_pixels); 1 = no shift). Sampling integrates the ODE
dx/dt = v from t = 1 to 0 on the shifted uniform grid with Euler or Heun steps, or an SDE with the
same marginals with Euler–Maruyama.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion import losses

UNIFORM = "uniform"
LOGIT_NORMAL = "logit_normal"
T_SAMPLINGS = (UNIFORM, LOGIT_NORMAL)
DEFAULT_TIME_SCALE = 1000.0
_STATIC = ("self", "model_fn", "num_steps")


def _bcast(t, ndim):
  """Per-example (or scalar) t reshaped to broadcast against a rank-``ndim`` batch."""
  t = jnp.asarray(t, jnp.float32)
  return t.reshape(t.shape + (1,) * (ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class FlowMatching:
  """Rectified-flow objective and ODE/SDE samplers; immutable and hashable (jit-static)."""
  t_sampling: str = UNIFORM
  logit_mean: float = 0.0
  logit_std: float = 1.0
  time_shift: float = 1.0
  time_scale: float = DEFAULT_TIME_SCALE

  def __post_init__(self):
    if self.t_sampling not in T_SAMPLINGS:
      raise ValueError(f"config.diffusion.t_sampling={self.t_sampling!r} is not supported; use one of "
                       f"{T_SAMPLINGS}.")
    if self.time_shift <= 0:
      raise ValueError(f"config.diffusion.time_shift={self.time_shift} must be > 0 (1 = no shift).")

  # ---------------------------------------------------------------- time

  def shift(self, t):
    """SD3 resolution shift of t (identity for time_shift = 1); maps [0, 1] onto [0, 1]."""
    s = self.time_shift
    return s * t / (1 + (s - 1) * t)

  def sample_timesteps(self, rng, batch_size: int):
    """Training times in [0, 1], float32 of shape (B,): uniform or logit-normal, then shifted."""
    if self.t_sampling == UNIFORM:
      u = jax.random.uniform(rng, (batch_size,), jnp.float32)
    else:
      u = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(rng, (batch_size,)))
    return self.shift(u)

  def time_grid(self, num_steps: int) -> np.ndarray:
    """The ``num_steps + 1`` sampling times from 1 (noise) to 0 (data), shifted; float64 numpy."""
    return self.shift(np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64))

  # ---------------------------------------------------------------- objective

  def interpolate(self, x_start, noise, t):
    """x_t = (1 - t) x_0 + t eps."""
    t = _bcast(t, x_start.ndim)
    return (1 - t) * x_start + t * noise

  def velocity(self, model_fn, x, t, model_kwargs=None):
    """The model's velocity at (x, t) as float32; t is per example or scalar, in [0, 1]."""
    t_model = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1]) * self.time_scale
    out = model_fn(x, t_model, **(model_kwargs or {}))
    if out.shape != x.shape:
      raise ValueError(f"flow matching needs a model output shaped like x {x.shape}, got {out.shape}: "
                       "build the DiT with learn_sigma=False (config.diffusion.learn_sigma=False).")
    return out.astype(jnp.float32)

  def training_losses(self, model_fn, x_start, t, model_kwargs=None, noise=None, rng=None):
    """Per-example velocity MSE: dict(loss, mse), float32 (B,). ``t`` float in [0, 1], shape (B,).

    ``noise`` is drawn from ``rng`` when None.
    """
    if noise is None:
      if rng is None:
        raise ValueError("training_losses needs noise= (an array like x_start) or rng= (a PRNG key).")
      noise = jax.random.normal(rng, x_start.shape, jnp.float32)
    x_t = self.interpolate(x_start, noise, t)
    v = self.velocity(model_fn, x_t, t, model_kwargs)
    mse = losses.mean_flat(jnp.square(v - (noise - x_start)))
    return dict(loss=mse, mse=mse)

  # ---------------------------------------------------------------- single steps

  def euler_step(self, model_fn, x, t, t_next, model_kwargs=None):
    """x_{t_next} = x_t + (t_next - t) v(x_t, t)."""
    return x + _bcast(t_next - t, x.ndim) * self.velocity(model_fn, x, t, model_kwargs)

  def heun_step(self, model_fn, x, t, t_next, model_kwargs=None):
    """Heun's (trapezoidal predictor-corrector) step from t to t_next."""
    dt = _bcast(t_next - t, x.ndim)
    v = self.velocity(model_fn, x, t, model_kwargs)
    x_euler = x + dt * v
    v_next = self.velocity(model_fn, x_euler, t_next, model_kwargs)
    return x + dt * 0.5 * (v + v_next)

  def euler_maruyama_step(self, model_fn, x, t, t_next, noise, diffusion_scale=1.0, model_kwargs=None):
    """One step of the reverse SDE with the ODE's marginals and diffusion g(t)^2 = 2 c t.

    With the score s = -eps_hat / t and eps_hat = x + (1 - t) v, the reverse drift is
    v - g^2 s / 2 = v + c eps_hat; c = ``diffusion_scale`` (0 gives the Euler ODE step).
    """
    h = _bcast(t - t_next, x.ndim)
    tb = _bcast(t, x.ndim)
    v = self.velocity(model_fn, x, t, model_kwargs)
    eps_hat = x + (1 - tb) * v
    drift = v + diffusion_scale * eps_hat
    return x - h * drift + jnp.sqrt(2 * diffusion_scale * tb * h) * noise

  # ---------------------------------------------------------------- loops (traceable)

  def _scan(self, step, x, num_steps, extra=None, grid=None):
    """Runs ``step(x, t, t_next, extra_k)`` over consecutive times of ``grid`` with lax.scan."""
    if grid is None:
      grid = self.time_grid(num_steps).astype(np.float32)
    x = jnp.asarray(x, jnp.float32)

    def body(x, inputs):
      t, t_next, e = inputs
      return step(x, t, t_next, e), None

    xs = (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]), extra)
    x, _ = jax.lax.scan(body, x, xs, length=num_steps)
    return x

  def euler_sample_loop_fn(self, model_fn, noise, num_steps: int, model_kwargs=None):
    """Traceable Euler ODE sampling from x_1 = ``noise`` to x_0 in ``num_steps`` steps."""
    return self._scan(lambda x, t, tn, _: self.euler_step(model_fn, x, t, tn, model_kwargs),
                      noise, num_steps)

  def heun_sample_loop_fn(self, model_fn, noise, num_steps: int, model_kwargs=None):
    """Traceable Heun ODE sampling: Heun steps (2 model calls), then an Euler step to t = 0.

    The last step is Euler, as in EDM, because the velocity need not be defined at t = 0.
    """
    grid = self.time_grid(num_steps).astype(np.float32)
    x = self._scan(lambda x, t, tn, _: self.heun_step(model_fn, x, t, tn, model_kwargs),
                   noise, num_steps - 1, grid=grid[:-1])
    return self.euler_step(model_fn, x, grid[-2], grid[-1], model_kwargs)

  def euler_maruyama_sample_loop_fn(self, model_fn, noise, rng, num_steps: int, diffusion_scale=1.0,
                                    model_kwargs=None):
    """Traceable Euler–Maruyama SDE sampling; the last step (to t = 0) is a noise-free Euler step.

    Step k draws its noise from ``jax.random.split(rng, num_steps)[k]``.
    """
    last = jnp.arange(num_steps) == num_steps - 1

    def step(x, t, t_next, inputs):
      key, is_last = inputs
      z = jax.random.normal(key, x.shape, jnp.float32)
      scale = jnp.where(is_last, 0.0, diffusion_scale)
      return self.euler_maruyama_step(model_fn, x, t, t_next, z, scale, model_kwargs)

    return self._scan(step, noise, num_steps, (jax.random.split(rng, num_steps), last))

  # ---------------------------------------------------------------- loops (jitted)

  euler_sample_loop = functools.partial(jax.jit, static_argnames=_STATIC)(euler_sample_loop_fn)
  heun_sample_loop = functools.partial(jax.jit, static_argnames=_STATIC)(heun_sample_loop_fn)
  euler_maruyama_sample_loop = functools.partial(jax.jit, static_argnames=_STATIC)(
      euler_maruyama_sample_loop_fn)
