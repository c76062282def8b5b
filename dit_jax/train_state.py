"""Train state, optimizer, sharded initialization and the pure training step.

Initialization is abstract-first: `jax.eval_shape` traces the init to get shapes and logical
axis names, `dit_jax.sharding.logical_to_shardings` turns those into NamedShardings on the
mesh, and `jax.jit(init, out_shardings=...)` materializes every array directly in its shard, so
the full state never exists on one device.

`train_step(state, batch, rng)` is pure: the per-step key is `fold_in(rng, state.step)`, so a
run that resumes from a checkpoint (state + data iterator) continues bit-identically.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from dit_jax import config_checks
from dit_jax import muon
from dit_jax import sharding
from dit_jax.models import dit

DROPOUT_RNG = "dropout"  # the model's RNG stream for label dropout
PARAMS_RNG = "params"
# Batch entries of text-conditioned models, passed to the model as keyword arguments: the caption
# as encoder outputs (B, L, D) or token ids (B, L) for a model with its own text encoder.
TEXT_KEYS = ("context", "context_mask")
STATE_FIELDS = ("step", "params", "ema_params", "opt_state")
MUON_CONSISTENT_RMS = 0.2  # Muon's update RMS as AdamW's, so the same learning rate fits both


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint must hold to continue training (the data iterator aside)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any

  def to_dict(self) -> dict:
    """The checkpointed form: a plain dict with the fields of STATE_FIELDS."""
    return {name: getattr(self, name) for name in STATE_FIELDS}


def build_model(config) -> nn.Module:
  """The DiT a config describes (variant expanded; dtypes may be strings)."""
  return dit.build_model(config_checks.model_kwargs(config.model.to_dict()))


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then constant, cosine or linear decay."""
  base = config.learning_rate
  warmup = config.warmup_steps
  decay_steps = max(config.num_train_steps - warmup, 1)
  end = base * config.get("end_learning_rate_factor", 1.0)
  kind = config.get("lr_schedule", "constant")
  if kind == "cosine":
    main = optax.cosine_decay_schedule(base, decay_steps, alpha=end / base if base else 0.0)
  elif kind == "linear":
    main = optax.linear_schedule(base, end, decay_steps)
  else:
    main = optax.constant_schedule(base)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def _is_kernel(path, _) -> bool:
  """True for a `kernel` parameter. The name is read from the last dict key of the path, so
  boxed leaves (`nn.LogicallyPartitioned`, whose value sits under an attribute) count too."""
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  return bool(names) and names[-1] == "kernel"


def decay_mask(params):
  """The "matrices" weight-decay mask: True for the weights of every linear map and of the patch
  embedding (parameters named `kernel`, rank >= 2 whatever the layer; the scanned layout adds a
  layer axis, which is why the mask goes by name, not rank), False for biases, LayerNorm scales
  and the label embedding table. (The position table is a constant, not a parameter.)"""
  return jax.tree_util.tree_map_with_path(_is_kernel, params)


WEIGHT_DECAY_MASKS = {
    "matrices": decay_mask,
    "all": None,
    "none": lambda params: jax.tree.map(lambda _: False, params),
}


def weight_decay_mask(config):
  """The `mask` argument of optax.adamw that `config.weight_decay_mask` names (default
  "matrices"): a function of the params, or None (decay every parameter)."""
  name = config.get("weight_decay_mask", "matrices")
  if name not in WEIGHT_DECAY_MASKS:
    raise config_checks.ConfigError(
        f"config.weight_decay_mask={name!r} is not one of {tuple(WEIGHT_DECAY_MASKS)} "
        "(matrices: decay only kernels, not biases, norms or embeddings).")
  return WEIGHT_DECAY_MASKS[name]


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW, or Muon (`config.optimizer`), on `learning_rate_schedule`, after global-norm clipping
  if grad_clip_norm > 0.

  AdamW: weight decay (when > 0) applies to the parameters `config.weight_decay_mask` selects.
  With no decay the mask is left out, so the optimizer state has the same structure as before
  masks. The first moment is stored in `config.adam_mu_dtype` (`config_checks.adam_mu_dtype`).
  Muon: optax.contrib.muon on the hidden kernels that `dit_jax.muon` names, with updates scaled to
  AdamW's RMS (`consistent_rms=0.2`, Liu et al. 2025) so that AdamW's learning rate carries over;
  the other parameters get optax's Adam with Nesterov momentum, as its muon does.
  """
  schedule = learning_rate_schedule(config)
  b1, b2 = config.get("adam_b1", 0.9), config.get("adam_b2", 0.999)
  mu_dtype = jnp.dtype(config_checks.adam_mu_dtype(config))
  if config_checks.optimizer(config) == "muon":
    tx = optax.contrib.muon(schedule, mu_dtype=mu_dtype, adam_b1=b1, adam_b2=b2,
                            consistent_rms=MUON_CONSISTENT_RMS,
                            muon_weight_dimension_numbers=_muon_dimension_numbers(config))
  else:
    mask = weight_decay_mask(config)
    tx = optax.adamw(schedule, b1=b1, b2=b2, eps=1e-8, weight_decay=config.weight_decay,
                     mask=mask if config.weight_decay > 0 else None, mu_dtype=mu_dtype)
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def _muon_dimension_numbers(config):
  """`dit_jax.muon.dimension_numbers` of the config's model (abstract: nothing is allocated)."""
  model = build_model(config)
  return muon.dimension_numbers(jax.eval_shape(functools.partial(_init_params, model),
                                               jax.random.key(0)))


def _init_params(model, rng) -> dict:
  """The model's initial parameters (logically boxed), from dummy inputs of its shapes."""
  return model.init({PARAMS_RNG: rng}, *dit.init_inputs(model),
                    **dit.model_kwargs_for_init(model))["params"]


def _create_state(config, rng) -> TrainState:
  """A fresh state with logically boxed leaves (unbox before returning from jit)."""
  params = _init_params(build_model(config), rng)
  # The EMA starts as an exact copy of the initial weights, as in the reference.
  ema_params = jax.tree.map(jnp.copy, params)
  opt_state = make_optimizer(config).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                    opt_state=opt_state)


def _rules(config):
  return sharding.rules_from_config(config.get("logical_axis_rules"))


def abstract_train_state(config, mesh: jax.sharding.Mesh):
  """Shapes, dtypes and shardings of the train state; allocates nothing.

  Returns:
    (abstract_state, state_shardings): a TrainState of jax.ShapeDtypeStruct (each carrying
    its sharding) and the matching TrainState of NamedSharding.
  """
  boxed = jax.eval_shape(functools.partial(_create_state, config), jax.random.key(0))
  shardings = sharding.logical_to_shardings(boxed, mesh, _rules(config))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return abstract, shardings


def abstract_params(config, mesh: jax.sharding.Mesh):
  """ShapeDtypeStructs (with shardings) of the model parameters alone; no optimizer is built."""
  boxed = jax.eval_shape(functools.partial(_init_params, build_model(config)), jax.random.key(0))
  shardings = sharding.logical_to_shardings(boxed, mesh, _rules(config))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def init_train_state(config, mesh: jax.sharding.Mesh, rng: jax.Array) -> TrainState:
  """Initializes the state directly into its shards (jit with out_shardings)."""
  _, shardings = abstract_train_state(config, mesh)
  init = jax.jit(lambda r: nn.unbox(_create_state(config, r)), out_shardings=shardings)
  return init(rng)


def _norm(tree) -> jax.Array:
  """L2 norm of all leaves together, in float32 (also for bfloat16 parameters)."""
  return optax.tree_utils.tree_norm(optax.tree_utils.tree_cast(tree, jnp.float32))


def all_finite(tree) -> jax.Array:
  """True iff every element of every leaf is finite (a norm could overflow on finite values)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def make_train_step(config):
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

  `rng` is the run's base key; the step's key is `fold_in(rng, state.step)`. `batch` is
  `dict(x=[B, H, W, C] float, y=[B] int)` (videos x=[B, F, H, W, C]; text models also
  `context`, `context_mask`: TEXT_KEYS) and optionally `skipped=[B] int` (unreadable inputs the
  data pipeline replaced), whose batch total is reported as metric `skipped`. A step whose loss,
  gradient or updated parameters are non-finite leaves the state unchanged and reports
  `finite=False`, so non-finite weights never reach a checkpoint; the caller raises. (The
  updated parameters are checked too: a non-finite learning rate gives a finite loss and
  gradient but a NaN update.)
  """
  from dit_jax import diffusion  # local: keeps configs importable without the diffusion package
  model = build_model(config)
  objective = diffusion.create_objective(config.diffusion)
  tx = make_optimizer(config)
  schedule = learning_rate_schedule(config)
  decay = config.ema_decay

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    t_rng, noise_rng, dropout_rng = jax.random.split(step_rng, 3)
    x, y = batch["x"], batch["y"]
    text = {k: batch[k] for k in TEXT_KEYS if k in batch}  # text models: the caption
    t = objective.sample_timesteps(t_rng, x.shape[0])
    noise = jax.random.normal(noise_rng, x.shape, x.dtype)

    def loss_fn(params):
      def model_fn(x_t, t, y, **text):
        return model.apply({"params": params}, x_t, t, y, train=True,
                           rngs={DROPOUT_RNG: dropout_rng}, **text)
      terms = objective.training_losses(model_fn, x, t, model_kwargs=dict(y=y, **text),
                                        noise=noise)
      return jnp.mean(terms["loss"]), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, step_size=1.0 - decay)
    grad_norm = _norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    new_state = TrainState(step=state.step + 1, params=params, ema_params=ema_params,
                           opt_state=opt_state)
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = {k: jnp.mean(v) for k, v in terms.items()}
    metrics.update(loss=loss, grad_norm=grad_norm, param_norm=_norm(params),
                   learning_rate=schedule(state.step), finite=finite)
    if "skipped" in batch:
      metrics["skipped"] = jnp.sum(batch["skipped"])
    return new_state, metrics

  return train_step


def jit_train_step(config, mesh: jax.sharding.Mesh, state_shardings):
  """The train step jitted for `mesh`: explicit in/out shardings, the state donated.

  The mesh and logical axis rules are entered inside the traced function, so the result can be
  called (or `.lower()`-ed) anywhere. Arguments: (state, batch, rng) with the batch a global
  array sharded over (data, fsdp) and rng replicated.
  """
  train_step = make_train_step(config)
  rules = _rules(config)

  def step_in_mesh(state, batch, rng):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return train_step(state, batch, rng)

  replicated = sharding.replicated(mesh)
  return jax.jit(
      step_in_mesh,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))
