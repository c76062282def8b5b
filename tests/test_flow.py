"""Flow matching against closed forms: the interpolant and velocity target, t sampling
(uniform, logit-normal, SD3 shift), and samplers with an oracle velocity landing on x_0.

For a point-mass data distribution at x_0 the exact velocity of x_t = (1 - t) x_0 + t eps is
(x_t - x_0) / t, so Euler, Heun and Euler–Maruyama (whose last step is noise-free) must all
return x_0; the scanned Euler loop must equal a Python loop over euler_step.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion import FlowMatching

SHAPE = (2, 4, 4, 3)
X0 = np.linspace(-0.9, 0.9, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
FLOW = FlowMatching()


def _oracle(x, t):
  t = (t / FLOW.time_scale).reshape(-1, 1, 1, 1)
  return (x - X0) / t


def test_interpolant_and_velocity_loss():
  noise = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
  t = jnp.array([0.25, 0.8])
  x_t = FLOW.interpolate(X0, noise, t)
  np.testing.assert_allclose(x_t[0], 0.75 * X0[0] + 0.25 * noise[0], rtol=1e-6)
  seen = {}

  def zero_model(x, t_model):
    seen["t"] = t_model
    return jnp.zeros_like(x)

  out = FLOW.training_losses(zero_model, X0, t, noise=noise)
  np.testing.assert_allclose(seen["t"], [250.0, 800.0])  # the documented t * 1000 scale
  np.testing.assert_allclose(out["loss"], np.mean((noise - X0) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  exact = FLOW.training_losses(_oracle, X0, t, noise=noise)
  np.testing.assert_allclose(exact["loss"], 0.0, atol=1e-9)


def test_learn_sigma_output_is_rejected():
  with pytest.raises(ValueError, match="learn_sigma=False"):
    FLOW.training_losses(lambda x, t: jnp.concatenate([x, x], -1), X0, jnp.array([0.5, 0.5]),
                         rng=jax.random.key(0))


def test_timestep_sampling_and_shift():
  u = FlowMatching().sample_timesteps(jax.random.key(0), 4096)
  assert u.dtype == jnp.float32 and float(u.min()) >= 0 and float(u.max()) < 1
  assert float(u.mean()) == pytest.approx(0.5, abs=0.02)
  ln = FlowMatching(t_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
  logits = jax.scipy.special.logit(ln.sample_timesteps(jax.random.key(1), 4096))
  assert float(logits.mean()) == pytest.approx(0.5, abs=0.05)
  assert float(logits.std()) == pytest.approx(0.8, abs=0.05)
  shifted = FlowMatching(time_shift=3.0)
  assert float(shifted.shift(0.5)) == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
  grid = shifted.time_grid(4)
  assert grid[0] == 1.0 and grid[-1] == 0.0 and np.all(np.diff(grid) < 0)
  with pytest.raises(ValueError, match="t_sampling"):
    FlowMatching(t_sampling="beta")


@pytest.mark.parametrize("loop", ["euler", "heun", "euler_maruyama"])
def test_oracle_samplers_land_on_x0(loop):
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  flow = FlowMatching(time_shift=2.0)
  if loop == "euler":
    out = flow.euler_sample_loop(_oracle, noise, 6)
  elif loop == "heun":
    out = flow.heun_sample_loop(_oracle, noise, 6)
  else:
    out = flow.euler_maruyama_sample_loop(_oracle, noise, jax.random.key(1), 6)
  np.testing.assert_allclose(out, X0, atol=1e-4)


def test_scanned_euler_equals_python_loop():
  model = lambda x, t, w: jnp.tanh(w * x) - 1e-3 * t.reshape(-1, 1, 1, 1)
  noise = jax.random.normal(jax.random.key(3), SHAPE)
  kw = dict(w=jnp.float32(0.7))
  scanned = FLOW.euler_sample_loop(model, noise, 5, model_kwargs=kw)
  grid = FLOW.time_grid(5).astype(np.float32)
  step = jax.jit(lambda x, t, tn: FLOW.euler_step(model, x, t, tn, kw))
  x = noise
  for t, t_next in zip(grid[:-1], grid[1:]):
    x = step(x, t, t_next)
  np.testing.assert_allclose(scanned, x, rtol=1e-5, atol=1e-5)
