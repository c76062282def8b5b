"""Gaussian samplers: known answers with an oracle model, scan == Python loop, one compilation.

The oracle returns the exact noise of x_t for a fixed x_0 (computed from the base process's
alpha-bars at the original timestep the model sees), so DDIM (eta = 0) and the ancestral sampler
must land on x_0, and one DDIM inversion step must equal q_sample at the next step.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion import create_diffusion

SHAPE = (2, 4, 4, 3)
X0 = np.linspace(-0.9, 0.9, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)


def _oracle(learn_sigma=True):
  abar = jnp.asarray(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)).astype(np.float32))

  def model(x, t):
    a = abar[t].reshape(-1, 1, 1, 1)
    eps = (x - jnp.sqrt(a) * X0) / jnp.sqrt(1 - a)
    return jnp.concatenate([eps, jnp.zeros_like(eps)], -1) if learn_sigma else eps
  return model


def _toy_model(x, t, w):
  """A smooth non-oracle model with a learned-variance half, for loop comparisons."""
  eps = jnp.tanh(w * x) + 1e-3 * t.reshape(-1, 1, 1, 1)
  return jnp.concatenate([eps, jnp.sin(x)], -1)


_ORACLE = _oracle()


def test_ddim_eta0_with_oracle_lands_on_x0():
  d = create_diffusion("ddim10")
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  out = d.ddim_sample_loop(_ORACLE, noise, jax.random.key(1), eta=0.0)
  np.testing.assert_allclose(out, X0, atol=2e-3)


def test_ancestral_with_oracle_lands_on_x0():
  d = create_diffusion("10")
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  out = d.p_sample_loop(_ORACLE, noise, jax.random.key(1))
  np.testing.assert_allclose(out, X0, atol=2e-3)


def test_ddim_reverse_step_with_oracle_is_q_sample_at_next_step():
  d = create_diffusion("ddim10")
  noise = np.asarray(jax.random.normal(jax.random.key(2), SHAPE))
  t = np.array([3, 3])
  x_t = d.q_sample(X0, t, noise)
  out = d.ddim_reverse_sample(_ORACLE, x_t, t)
  np.testing.assert_allclose(out["sample"], d.q_sample(X0, t + 1, noise), atol=2e-4)
  np.testing.assert_allclose(out["pred_xstart"], X0, atol=2e-4)
  # The full inversion of x_0 keeps the eps implied at t = 0 and ends on it (abar_next = 0):
  # eps_0 = (x_0 / sqrt(abar_0) - x_0) / sqrt(1 / abar_0 - 1) = x_0 (1 - sqrt(abar_0)) / sqrt(1 - abar_0).
  abar0 = d.alphas_cumprod[0]
  x_T = d.ddim_reverse_sample_loop(_ORACLE, X0)
  np.testing.assert_allclose(x_T, X0 * (1 - np.sqrt(abar0)) / np.sqrt(1 - abar0), atol=1e-4)


def test_clip_denoised_clips_pred_xstart():
  d = create_diffusion("10")
  big = 3.0 * jnp.ones(SHAPE)
  out = d.p_mean_variance(lambda x, t: jnp.concatenate([-x, 0 * x], -1), big, jnp.array([9, 9]),
                          clip_denoised=True)
  assert float(jnp.abs(out["pred_xstart"]).max()) <= 1.0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scanned_loop_equals_python_loop(sampler):
  d = create_diffusion("8")
  noise = jax.random.normal(jax.random.key(3), SHAPE)
  rng = jax.random.key(4)
  kw = dict(w=jnp.float32(0.7))
  if sampler == "ddpm":
    scanned = d.p_sample_loop(_toy_model, noise, rng, model_kwargs=kw)
    step = lambda x, t, z: d.p_sample(_toy_model, x, t, z, model_kwargs=kw)
  else:
    scanned = d.ddim_sample_loop(_toy_model, noise, rng, eta=0.5, model_kwargs=kw)
    step = lambda x, t, z: d.ddim_sample(_toy_model, x, t, z, eta=0.5, model_kwargs=kw)
  step = jax.jit(step)
  keys = jax.random.split(rng, d.num_timesteps)
  x = noise
  for k, i in enumerate(reversed(range(d.num_timesteps))):
    x = step(x, jnp.full((SHAPE[0],), i), jax.random.normal(keys[k], SHAPE))["sample"]
  np.testing.assert_allclose(scanned, x, rtol=1e-5, atol=1e-5)


def test_250_step_loop_traces_the_model_once():
  d = create_diffusion("250")
  calls = []

  def model(x, t, w):
    calls.append(1)
    return _toy_model(x, t, w)

  noise = jnp.zeros(SHAPE)
  kw = dict(w=jnp.float32(0.5))
  first = d.p_sample_loop(model, noise, jax.random.key(0), model_kwargs=kw)
  assert len(calls) == 1, f"model traced {len(calls)} times for 250 steps"
  # A new key, new noise and new parameter values reuse the compiled loop.
  d.p_sample_loop(model, noise + 1, jax.random.key(1), model_kwargs=dict(w=jnp.float32(0.6)))
  assert len(calls) == 1
  assert bool(jnp.all(jnp.isfinite(first)))
