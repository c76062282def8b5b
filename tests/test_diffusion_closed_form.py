"""Gaussian diffusion against closed-form math derived here (not against our own recorded output).

Checks: the forward process moments, the Bayes posterior q(x_{t-1} | x_t, x_0), the Gaussian KL
and the discretized decoder likelihood, respacing tables written out by hand for the reference
grammar, the reference error messages, and the structure of the training losses (stop-gradient
on the mean for vb, the t = 0 decoder term, the rescalings, fixed variances).
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion import create_diffusion, losses, space_timesteps

SHAPE = (4, 2, 2, 3)


def test_linear_betas_and_float64():
  d = create_diffusion("")
  assert d.betas.dtype == np.float64
  assert d.betas[0] == pytest.approx(1e-4) and d.betas[-1] == pytest.approx(0.02)
  d100 = create_diffusion("", diffusion_steps=100)
  assert d100.betas[0] == pytest.approx(1e-3) and d100.betas[-1] == pytest.approx(0.2)
  with pytest.raises(ValueError, match="noise_schedule"):
    create_diffusion("", noise_schedule="quadratic")
  with pytest.raises(ValueError, match="diffusion_steps=10 "):
    create_diffusion("", diffusion_steps=10)


def test_tables_are_immutable_and_object_hashable():
  d = create_diffusion("250")
  with pytest.raises(ValueError):
    d.betas[0] = 1.0
  assert hash(d) == hash(create_diffusion("250")) and d == create_diffusion("250")
  assert d != create_diffusion("")


def test_q_sample_moments():
  d = create_diffusion("")
  t = 300
  x0 = np.full((20000, 1, 1, 1), 0.7, np.float32)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  xt = np.asarray(d.q_sample(x0, np.full(x0.shape[0], t), noise))
  abar = np.prod(1 - np.linspace(1e-4, 0.02, 1000)[: t + 1])
  assert xt.mean() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
  assert xt.var() == pytest.approx(1 - abar, rel=0.03)
  mean, var, log_var = d.q_mean_variance(x0[:1], np.array([t]))
  assert float(mean.ravel()[0]) == pytest.approx(math.sqrt(abar) * 0.7, rel=1e-5)
  assert float(var.ravel()[0]) == pytest.approx(1 - abar, rel=1e-5)
  assert float(log_var.ravel()[0]) == pytest.approx(math.log(1 - abar), rel=1e-5)


@pytest.mark.parametrize("respacing,t", [("", 1), ("", 600), ("ddim50", 7)])
def test_posterior_is_bayes_rule(respacing, t):
  """q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1-abar_{t-1})."""
  d = create_diffusion(respacing)
  abar = d.alphas_cumprod
  abar_prev = abar[t - 1]
  a_t = abar[t] / abar_prev
  b_t = 1 - a_t
  x0, xt = 0.3, -1.1
  precision = a_t / b_t + 1 / (1 - abar_prev)
  var = 1 / precision
  mean = var * (math.sqrt(a_t) * xt / b_t + math.sqrt(abar_prev) * x0 / (1 - abar_prev))
  ours_mean, ours_var, ours_log_var = d.q_posterior_mean_variance(
      jnp.full((1, 1, 1, 1), x0), jnp.full((1, 1, 1, 1), xt), np.array([t]))
  assert float(ours_mean.ravel()[0]) == pytest.approx(mean, rel=1e-4)
  assert float(ours_var.ravel()[0]) == pytest.approx(var, rel=1e-4)
  assert float(ours_log_var.ravel()[0]) == pytest.approx(math.log(var), rel=1e-4)


def test_posterior_log_variance_clipped_at_zero():
  d = create_diffusion("")
  assert d.posterior_variance[0] == 0.0
  assert d.posterior_log_variance_clipped[0] == np.log(d.posterior_variance[1])


def test_normal_kl_closed_form():
  m, lv = jnp.array([0.3, -2.0]), jnp.array([-1.0, 0.5])
  np.testing.assert_allclose(losses.normal_kl(m, lv, m, lv), 0.0, atol=1e-7)
  # KL(N(0,1) || N(1, e^2)) = log(e/1) + (1 + 1) / (2 e^2) - 1/2
  expected = 1.0 + 2.0 / (2 * math.e ** 2) - 0.5
  assert float(losses.normal_kl(0.0, 0.0, 1.0, 2.0)) == pytest.approx(expected, rel=1e-6)


def test_decoder_nll_of_point_mass():
  """A (nearly) point-mass decoder at the data puts all its mass in the right 8-bit bin."""
  x = jnp.array([-1.0, -0.5, 0.0, 127.0 / 127.5 - 1.0, 1.0])
  log_p = losses.discretized_gaussian_log_likelihood(x, means=x, log_scales=jnp.full_like(x, -12.0))
  np.testing.assert_allclose(log_p, 0.0, atol=1e-6)
  far = losses.discretized_gaussian_log_likelihood(x, means=x + 0.5, log_scales=jnp.full_like(x, -12.0))
  np.testing.assert_allclose(far[1:4], math.log(1e-12), rtol=1e-6)  # the clamp
  assert float(far[4]) == 0.0  # x = 1 is the last bin, which extends to +inf and holds x + 0.5
  # A unit Gaussian: mass of the bin [x - 1/255, x + 1/255] around its mean ~ (2/255) phi(0).
  wide = losses.discretized_gaussian_log_likelihood(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))
  assert float(wide[0]) == pytest.approx(math.log(2 / 255 / math.sqrt(2 * math.pi)), abs=1e-3)


@pytest.mark.parametrize("respacing,steps,expected", [
    ("", 10, list(range(10))),
    ("10", 10, list(range(10))),
    ("3", 10, [0, 4, 9]),            # stride 9/2 = 4.5, round(4.5) = 4 (banker's rounding)
    ("2,1", 10, [0, 4, 5]),          # sections [0..4] and [5..9]; a count of 1 takes the start
    ("3,2,1", 10, [0, 2, 3, 4, 6, 7]),  # sections of 4, 3, 3: [0, 1.5->2, 3], [4, 6], [7]
    ("ddim5", 10, [0, 2, 4, 6, 8]),
    ("ddim4", 10, [0, 3, 6, 9]),
    ("ddim50", 1000, list(range(0, 1000, 20))),
    ("ddim25", 1000, list(range(0, 1000, 40))),
])
def test_respacing_grammar(respacing, steps, expected):
  assert space_timesteps(steps, respacing) == expected
  if steps == 1000:
    d = create_diffusion(respacing, diffusion_steps=steps)
    np.testing.assert_array_equal(d.timestep_map, expected)
    assert d.num_timesteps == len(expected)


def test_respacing_250_and_sections_1000():
  kept = space_timesteps(1000, "250")
  assert len(kept) == 250 and kept[:4] == [0, 4, 8, 12] and kept[-1] == 999
  kept = space_timesteps(1000, "20,10,5")  # sections of 334, 333, 333 steps
  assert len(kept) == 35
  assert kept[:4] == [0, 18, 35, 53] and kept[19] == 333     # stride 333/19
  assert kept[20:23] == [334, 371, 408] and kept[29] == 666  # stride 332/9
  assert kept[30:] == [667, 750, 833, 916, 999]              # stride 332/4 = 83


def test_respaced_process_keeps_alpha_bars():
  base = create_diffusion("")
  for respacing in ("250", "ddim50", "20,10,5"):
    d = create_diffusion(respacing)
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[d.timestep_map], rtol=1e-12)
    prev = np.concatenate([[1.0], base.alphas_cumprod[d.timestep_map][:-1]])
    np.testing.assert_allclose(d.betas, 1 - base.alphas_cumprod[d.timestep_map] / prev, rtol=1e-12)


@pytest.mark.parametrize("respacing,message", [
    ("ddim600", "cannot create exactly 1000 steps with an integer stride"),
    ("1001", "cannot divide section of 1000 steps into 1001"),
    ("600,600", "cannot divide section of 500 steps into 600"),
])
def test_respacing_errors(respacing, message):
  with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
    create_diffusion(respacing)


def _linear_model(x, t, a, b):
  """A model with two scalar parameters: eps = a * x, variance values = b (learned range)."""
  return jnp.concatenate([a * x, jnp.full_like(x, b)], axis=-1)


def _loss_inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 2)
  x0 = jnp.clip(jax.random.normal(keys[0], SHAPE) * 0.5, -1, 1)
  return x0, jax.random.normal(keys[1], SHAPE)


def test_hybrid_loss_terms_and_stop_gradient():
  d = create_diffusion("")
  x0, noise = _loss_inputs()
  t = jnp.array([0, 1, 500, 999])
  kw = dict(a=0.3, b=0.2)

  def vb_sum(a, b):
    return d.training_losses(_linear_model, x0, t, dict(a=a, b=b), noise=noise)["vb"].sum()

  @jax.jit
  def compute():
    out = d.training_losses(_linear_model, x0, t, kw, noise=noise)
    x_t = d.q_sample(x0, t, noise)
    pm = d.p_mean_variance(_linear_model, x_t, t, model_kwargs=kw)
    nll = -losses.discretized_gaussian_log_likelihood(x0, pm["mean"], 0.5 * pm["log_variance"])
    true_mean, _, true_lv = d.q_posterior_mean_variance(x0, x_t, t)
    kl = losses.normal_kl(true_mean, true_lv, pm["mean"], pm["log_variance"])
    grads = jax.grad(vb_sum, argnums=(0, 1))(0.3, 0.2)
    return out, x_t, nll.mean(axis=(1, 2, 3)), kl.mean(axis=(1, 2, 3)), grads

  out, x_t, nll, kl, (grad_a, grad_b) = compute()
  assert set(out) == {"loss", "mse", "vb"} and out["loss"].shape == (4,)
  np.testing.assert_allclose(out["loss"], out["mse"] + out["vb"], rtol=1e-6)
  np.testing.assert_allclose(out["mse"], np.mean((noise - 0.3 * x_t) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  # vb trains only the variance: d vb / d a = 0, d vb / d b != 0.
  assert float(grad_a) == 0.0 and abs(float(grad_b)) > 0
  # At t = 0 vb is the decoder NLL in bits; elsewhere the KL to the posterior in bits.
  assert float(out["vb"][0]) == pytest.approx(float(nll[0]) / math.log(2), rel=1e-5)
  np.testing.assert_allclose(out["vb"][1:], kl[1:] / math.log(2), rtol=1e-5)


def test_learned_range_log_variance_interpolates():
  """frac = (v + 1) / 2 interpolates between the clipped posterior log variance and log beta."""
  d = create_diffusion("")
  x = jnp.zeros((3, 1, 1, 1))
  t = jnp.array([0, 10, 10])
  v = jnp.array([0.0, -1.0, 1.0]).reshape(3, 1, 1, 1)
  pm = d.p_mean_variance_from_output(jnp.concatenate([x, v], -1), x, t)
  lo, hi = d.posterior_log_variance_clipped, np.log(d.betas)
  expected = [0.5 * (lo[0] + hi[0]), lo[10], hi[10]]
  np.testing.assert_allclose(pm["log_variance"].ravel(), expected, rtol=1e-6)


def test_rescaled_and_kl_losses():
  x0, noise = _loss_inputs(1)
  kw = dict(a=0.3, b=-0.4)
  plain = create_diffusion("250").training_losses(_linear_model, x0, jnp.array([0, 3, 100, 249]), kw, noise=noise)
  scaled = create_diffusion("250", rescale_learned_sigmas=True).training_losses(
      _linear_model, x0, jnp.array([0, 3, 100, 249]), kw, noise=noise)
  np.testing.assert_allclose(scaled["vb"], plain["vb"] * 250 / 1000, rtol=1e-6)
  np.testing.assert_allclose(scaled["mse"], plain["mse"], rtol=1e-6)
  kl = create_diffusion("250", use_kl=True).training_losses(
      _linear_model, x0, jnp.array([0, 3, 100, 249]), kw, noise=noise)
  np.testing.assert_allclose(kl["loss"], plain["vb"] * 250, rtol=1e-5)


@pytest.mark.parametrize("sigma_small", [False, True])
def test_fixed_variance_loss_is_mse(sigma_small):
  d = create_diffusion("", learn_sigma=False, sigma_small=sigma_small)
  x0, noise = _loss_inputs(2)
  out = d.training_losses(lambda x, t: 0.5 * x, x0, jnp.array([0, 1, 2, 999]), noise=noise)
  np.testing.assert_array_equal(out["loss"], out["mse"])
  np.testing.assert_array_equal(out["vb"], 0.0)
  pm = d.p_mean_variance(lambda x, t: 0.5 * x, x0, jnp.array([0, 1, 2, 999]))
  variance = d.posterior_variance if sigma_small else np.append(d.posterior_variance[1], d.betas[1:])
  np.testing.assert_allclose(pm["variance"][:, 0, 0, 0], variance[[0, 1, 2, 999]], rtol=1e-6)


def test_predict_xstart_regresses_x0():
  d = create_diffusion("", predict_xstart=True, learn_sigma=False)
  x0, noise = _loss_inputs(3)
  out = d.training_losses(lambda x, t: jnp.zeros_like(x), x0, jnp.array([5, 6, 7, 8]), noise=noise)
  np.testing.assert_allclose(out["mse"], jnp.mean(x0 ** 2, axis=(1, 2, 3)), rtol=1e-6)


def test_predict_v_regresses_the_velocity():
  """v = sqrt(abar) eps - sqrt(1 - abar) x_0 with abar of the linear schedule written out here."""
  d = create_diffusion("", predict_v=True, learn_sigma=False)
  x0, noise = _loss_inputs(3)
  t = np.array([5, 300, 700, 999])
  out = d.training_losses(lambda x, t: jnp.zeros_like(x), x0, jnp.asarray(t), noise=noise)
  alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
  v = np.sqrt(alpha_bar) * noise - np.sqrt(1 - alpha_bar) * x0
  np.testing.assert_allclose(out["mse"], np.mean(v ** 2, axis=(1, 2, 3)), rtol=1e-5)
  with pytest.raises(ValueError, match="predict_xstart=True and predict_v=True"):
    create_diffusion("", predict_xstart=True, predict_v=True)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_min_snr_gamma_weights_only_the_mse_term(target):
  """Min-SNR-5 (Hang et al. 2023): loss = w * mse + vb with w = min(SNR, 5) / SNR for an eps
  target, min(SNR, 5) for x_0 and min(SNR, 5) / (SNR + 1) for v, SNR = abar / (1 - abar) of the
  linear schedule written out here; mse and vb as without it. Early t (SNR > 5) are
  down-weighted; for eps, late t keep weight 1."""
  x0, noise = _loss_inputs(4)
  t = jnp.array([0, 50, 300, 999])
  kw = dict(a=0.3, b=0.2)
  args = dict(predict_xstart=target == "x0", predict_v=target == "v")
  plain = create_diffusion("", **args).training_losses(_linear_model, x0, t, kw, noise=noise)
  got = create_diffusion("", min_snr_gamma=5.0, **args).training_losses(
      _linear_model, x0, t, kw, noise=noise)
  alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[np.asarray(t)]
  snr = alpha_bar / (1 - alpha_bar)
  weight = np.minimum(snr, 5.0) / dict(eps=snr, x0=1.0, v=snr + 1)[target]
  np.testing.assert_allclose(got["mse"], plain["mse"], rtol=1e-6)
  np.testing.assert_allclose(got["vb"], plain["vb"], rtol=1e-6)
  np.testing.assert_allclose(got["loss"], weight * plain["mse"] + plain["vb"], rtol=1e-5)
  if target == "eps":
    assert weight[0] < 1e-3 and weight[-1] == 1.0
  with pytest.raises(ValueError, match="min_snr_gamma=5.0.*use_kl"):
    create_diffusion("", min_snr_gamma=5.0, use_kl=True)
  with pytest.raises(ValueError, match="min_snr_gamma=-1"):
    create_diffusion("", min_snr_gamma=-1)


def test_model_sees_original_timesteps_and_shape_errors():
  d = create_diffusion("ddim50")
  seen = {}

  def model(x, t):
    seen["t"] = t
    return jnp.concatenate([x, x], -1)

  d.p_mean_variance(model, jnp.zeros(SHAPE), jnp.array([0, 1, 2, 49]))
  np.testing.assert_array_equal(seen["t"], [0, 20, 40, 980])
  with pytest.raises(ValueError, match="learn_sigma"):
    d.p_mean_variance(lambda x, t: x, jnp.zeros(SHAPE), jnp.array([0, 1, 2, 3]))
  with pytest.raises(ValueError, match="noise= .* or rng="):
    d.training_losses(model, jnp.zeros(SHAPE), jnp.array([0, 1, 2, 3]))
