"""Losses and samplers jit and run with the batch sharded over an 8-device (data=2, fsdp=4) mesh,
and give the same numbers as on one device (the noise comes from partitionable PRNG keys).
"""
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import diffusion, sharding

SHAPE = (8, 2, 2, 3)


def _model(x, t, y, w):
  eps = jnp.tanh(w * x) + 1e-3 * (t + y).reshape(-1, 1, 1, 1).astype(jnp.float32)
  return jnp.concatenate([eps, jnp.sin(x)], -1)


def _flow_model(x, t, y, w):
  return jnp.tanh(w * x) - 1e-3 * (t + y).reshape(-1, 1, 1, 1)


def _batch(mesh):
  keys = jax.random.split(jax.random.key(0), 2)
  batch = dict(x=jax.random.normal(keys[0], SHAPE), noise=jax.random.normal(keys[1], SHAPE),
               y=jnp.arange(8, dtype=jnp.int32))
  return batch, jax.device_put(batch, sharding.batch_sharding(mesh))


def _spans_mesh(array):
  return len(array.sharding.device_set) == 8 and not array.sharding.is_fully_replicated


def test_training_losses_sharded(devices):
  mesh = sharding.create_mesh(dict(data=2, fsdp=4, tensor=1), devices)
  plain, sharded = _batch(mesh)
  for cfg, model in ((dict(objective="gaussian"), _model),
                     (dict(objective="flow", learn_sigma=False), _flow_model)):
    objective = diffusion.create_objective(cfg)

    @jax.jit
    def loss_fn(batch, rng, objective=objective, model=model):
      t = objective.sample_timesteps(rng, batch["x"].shape[0])
      terms = objective.training_losses(model, batch["x"], t, dict(y=batch["y"], w=0.5),
                                        noise=batch["noise"])
      return terms["loss"]

    with sharding.mesh_context(mesh):
      loss = loss_fn(sharded, jax.random.key(1))
    assert loss.shape == (8,) and _spans_mesh(loss)
    np.testing.assert_allclose(loss, loss_fn(plain, jax.random.key(1)), rtol=1e-5)


def test_samplers_sharded(devices):
  mesh = sharding.create_mesh(dict(data=2, fsdp=4, tensor=1), devices)
  plain, sharded = _batch(mesh)
  for cfg, model, sampler in ((dict(objective="gaussian"), _model, "ddpm"),
                              (dict(objective="flow", learn_sigma=False), _flow_model, "euler_maruyama")):
    def run(batch):
      return diffusion.sample(cfg, model, batch["noise"], jax.random.key(2), sampler=sampler,
                              num_steps=5, model_kwargs=dict(y=batch["y"], w=jnp.float32(0.5)),
                              cfg_scale=1.5, null_label=10)
    with sharding.mesh_context(mesh):
      out = run(sharded)
    assert out.shape == SHAPE and _spans_mesh(out)
    np.testing.assert_allclose(out, run(plain), rtol=1e-5, atol=1e-5)
