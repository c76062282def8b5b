"""Gaussian KL and the discretized Gaussian decoder log-likelihood of IDDPM/ADM (elementwise)."""
import math

import jax.numpy as jnp

# Pixels in [-1, 1] are quantized to 256 levels: bins of width 2/255, half-width 1/255.
_BIN_HALF_WIDTH = 1.0 / 255.0
# Values beyond these edges are the first/last bin, whose mass extends to -inf/+inf.
_EDGE = 0.999
_LOG_CLAMP = 1e-12


def mean_flat(x):
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """Fast tanh approximation of the standard normal CDF (the one the reference uses)."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-likelihood (nats, elementwise) of data ``x`` in [-1, 1] quantized to 8 bits.

  Args:
    x: targets, uint8 images rescaled to [-1, 1].
    means: Gaussian means, same shape.
    log_scales: Gaussian log standard deviations, same shape.
  """
  centered_x = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + _BIN_HALF_WIDTH))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - _BIN_HALF_WIDTH))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, _LOG_CLAMP))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, _LOG_CLAMP))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, _LOG_CLAMP))
  return jnp.where(x < -_EDGE, log_cdf_plus,
                   jnp.where(x > _EDGE, log_one_minus_cdf_min, log_cdf_delta))
