"""Validation of a training config before anything is compiled.

Every error names the config field at fault and how to fix it, so a pod job fails in seconds
with a readable message instead of minutes later inside XLA.
"""
import dataclasses
import math
import types
from typing import Any, Mapping

from dit_jax import sharding

OBJECTIVES = ("gaussian", "flow")
LR_SCHEDULES = ("constant", "cosine", "linear")
ADAM_MU_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "muon")


class ConfigError(ValueError):
  """A config field has a value that cannot work; the message names the field and the fix."""


def model_kwargs(model_cfg: Mapping) -> dict:
  """The DiT constructor kwargs a model config describes, with its `variant` expanded.

  Explicit keys win over the variant's, as in `dit_jax.models.dit.build_model`.
  """
  from dit_jax.models import dit  # local: configs can be checked before the model is imported
  cfg = dict(model_cfg)
  variant = cfg.pop("variant", "") or ""
  if not variant:
    return cfg
  try:
    expanded = dit.variant_kwargs(variant)
  except (KeyError, ValueError) as e:
    raise ConfigError(
        f"config.model.variant={variant!r} is not a DiT variant: {e}. Use one of "
        "S|B|L|XL followed by /2, /4 or /8, e.g. 'XL/2'.") from e
  return {**expanded, **cfg}


def _check_model(config) -> None:
  kw = model_kwargs(config.model.to_dict())
  for name in ("input_size", "patch_size", "hidden_size", "num_heads"):
    if name not in kw:
      raise ConfigError(f"config.model.{name} is missing; set it or set config.model.variant.")
  size, patch, width = kw["input_size"], kw["patch_size"], kw.get("input_width", 0)
  if size % patch:
    raise ConfigError(
        f"config.model.patch_size={patch} does not divide config.model.input_size={size}; "
        f"choose a patch size that divides {size} (e.g. 2), or change the resolution.")
  if width < 0 or width % patch:
    raise ConfigError(
        f"config.model.input_width={width} must be 0 (square: the width is input_size) or a "
        f"positive multiple of config.model.patch_size={patch}; pad or crop the width to a "
        f"multiple of {patch}, or choose a patch size that divides it.")
  from dit_jax.models import blocks, dit, layers  # local, as in model_kwargs
  impl = kw.get("attention_impl", "auto")
  if impl not in layers.ATTENTION_IMPLS:
    raise ConfigError(
        f"config.model.attention_impl={impl!r} is not an attention kernel; use one of "
        f"{layers.ATTENTION_IMPLS} ('auto' picks the fastest for the device and dtype).")
  # The fields the config leaves out take DiT's own defaults, read from the dataclass.
  defaults = {f.name: f.default for f in dataclasses.fields(dit.DiT)
              if f.default is not dataclasses.MISSING}
  model = types.SimpleNamespace(**{**defaults, **kw})
  problems = (blocks.video_problems(model) + blocks.text_problems(model)
              + blocks.pos_embed_problems(model))
  if problems:
    raise ConfigError("config.model." + "; config.model.".join(problems) + ".")
  width, heads = kw["hidden_size"], kw["num_heads"]
  if width % heads:
    raise ConfigError(
        f"config.model.num_heads={heads} does not divide config.model.hidden_size={width}; "
        f"choose a head count that divides {width}.")
  diffusion = config.diffusion
  if diffusion.get("objective", "gaussian") == "gaussian" and (
      bool(kw.get("learn_sigma", True)) != bool(diffusion.get("learn_sigma", True))):
    raise ConfigError(
        f"config.model.learn_sigma={kw.get('learn_sigma')} but config.diffusion.learn_sigma="
        f"{diffusion.get('learn_sigma')}; set both to the same value.")


def _check_mesh_and_batch(config, num_devices: int, process_count: int) -> None:
  mesh_cfg = config.mesh.to_dict()
  num_slices = math.prod(abs(mesh_cfg.get(f"dcn_{a}", 1)) for a in sharding.MESH_AXES)
  try:
    ici, dcn = sharding.mesh_shape(mesh_cfg, num_devices, num_slices)
  except ValueError as e:
    raise ConfigError(
        f"config.mesh does not fit {num_devices} devices: {e} (config.mesh.data * fsdp * "
        f"sequence * tensor * dcn_data * dcn_fsdp * dcn_sequence * dcn_tensor must equal "
        f"{num_devices}).") from e
  shape = dict(zip(sharding.MESH_AXES, (i * d for i, d in zip(ici, dcn))))
  shards = math.prod(shape[a] for a in sharding.BATCH_MESH_AXES)
  batch = config.global_batch_size
  if batch <= 0:
    raise ConfigError(f"config.global_batch_size={batch} must be a positive number of examples.")
  if batch % shards:
    raise ConfigError(
        f"config.global_batch_size={batch} is not divisible by the {shards} batch-sharding "
        f"devices (mesh data={shape['data']} x fsdp={shape['fsdp']}); use a multiple of {shards}.")
  if batch % process_count:
    raise ConfigError(
        f"config.global_batch_size={batch} is not divisible by the process count "
        f"{process_count}; use a multiple of {process_count}.")


def _check_finite(config) -> None:
  """Every float field must be finite: a NaN learning rate (or beta, decay, clip norm, ...)
  would otherwise train NaN weights, or silently turn a feature off (`nan > 0` is False)."""
  def visit(name: str, value: Any) -> None:
    if isinstance(value, Mapping):
      for key, item in value.items():
        visit(f"{name}.{key}", item)
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{name}={value} is not a finite number; give it a finite value.")
  visit("config", config.to_dict())


def adam_mu_dtype(config) -> str:
  """`config.adam_mu_dtype`, the storage dtype of Adam's first moment ("float32" by default, or
  "bfloat16": half that state's memory and traffic; the second moment stays float32)."""
  name = config.get("adam_mu_dtype", "float32")
  if name not in ADAM_MU_DTYPES:
    raise ConfigError(f"config.adam_mu_dtype={name!r} must be one of {ADAM_MU_DTYPES}.")
  return name


def optimizer(config) -> str:
  """`config.optimizer`: "adamw" (the default) or "muon" (train_state.make_optimizer). Muon is
  built without weight decay, so a decay > 0 is refused rather than silently dropped."""
  name = config.get("optimizer", "adamw")
  if name not in OPTIMIZERS:
    raise ConfigError(f"config.optimizer={name!r} is not one of {OPTIMIZERS}.")
  if name == "muon" and config.weight_decay > 0:
    raise ConfigError(f"config.weight_decay={config.weight_decay} is not supported with "
                      "config.optimizer='muon'; set config.weight_decay=0 or use 'adamw'.")
  return name


def _check_training(config) -> None:
  adam_mu_dtype(config)
  optimizer(config)
  if config.get("lr_schedule", "constant") not in LR_SCHEDULES:
    raise ConfigError(f"config.lr_schedule={config.lr_schedule!r} is not one of {LR_SCHEDULES}.")
  if not 0.0 <= config.ema_decay <= 1.0:
    raise ConfigError(f"config.ema_decay={config.ema_decay} must lie in [0, 1] (0: EMA = params).")
  if config.diffusion.get("objective", "gaussian") not in OBJECTIVES:
    raise ConfigError(
        f"config.diffusion.objective={config.diffusion.objective!r} is not one of {OBJECTIVES}.")
  from dit_jax.diffusion.objective import create_objective  # local: as in _check_sampling
  try:  # the objective's own checks (schedule, min_snr_gamma), before anything compiles
    create_objective(config.diffusion)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  for name in ("num_train_steps", "checkpoint_every_steps", "log_every_steps"):
    if config[name] <= 0:
      raise ConfigError(f"config.{name}={config[name]} must be a positive number of steps.")
  if config.warmup_steps < 0:
    raise ConfigError(f"config.warmup_steps={config.warmup_steps} must be >= 0.")
  for name, zero in (("keep_checkpoints", "keep all"), ("keep_period", "off")):
    if config.get(name, 0) < 0:
      raise ConfigError(f"config.{name}={config[name]} must be >= 0 (0: {zero}).")


def _check_sampling(config) -> None:
  """The sample (and, when on, eval) sections must suit the objective: training samples with
  them mid-run."""
  from dit_jax.diffusion.guidance import GUIDANCE_MODES  # local: as the model import above
  from dit_jax.diffusion.objective import SAMPLERS
  from dit_jax.evaluation import during_training
  objective = config.diffusion.get("objective", "gaussian")
  sections = ["sample"] + (["eval"] if during_training.enabled(config) else [])
  for section in sections:
    section_cfg = config.get(section) or {}
    sampler = section_cfg.get("sampler") or "ddpm"
    if sampler not in SAMPLERS[objective]:
      raise ConfigError(
          f"config.{section}.sampler={sampler!r} does not go with config.diffusion.objective="
          f"{objective!r}; use one of {SAMPLERS[objective]}.")
    guidance = section_cfg.get("guidance") or "official"
    if guidance not in GUIDANCE_MODES:
      raise ConfigError(
          f"config.{section}.guidance={guidance!r} is not one of {tuple(GUIDANCE_MODES)}.")
  problems = during_training.check_config(config)
  if problems:
    raise ConfigError(" ".join(problems))


def _check_data(config) -> None:
  """The data directory must open (locally or in a bucket) and give the model's input shape."""
  from dit_jax import data  # local: the data package pulls in grain
  from dit_jax.data import sources
  try:
    sources.check_data_dir(config.data)
  except sources.DataDirError as e:
    raise ConfigError(f"config.data.data_dir={e.data_dir}: {e.problem}") from e
  except ValueError as e:  # a missing field, named by the source
    raise ConfigError(str(e)) from e
  kw = model_kwargs(config.model.to_dict())
  frames = kw.get("num_frames", 0)
  height = kw["input_size"]
  width = kw.get("input_width", 0) or height
  want = (frames,) * bool(frames) + (height, width, kw.get("in_channels", 4))
  got = tuple(data.input_shape(config.data))
  if got != want:
    fields = "num_frames, " * bool(frames) + "input_size (H), input_width (W; 0: square), in_channels"
    raise ConfigError(
        f"config.data gives inputs of shape {got} but the model expects {want} "
        f"(config.model.{fields}); make config.data.image_size / num_frames / source agree "
        "with config.model (num_frames=0 is an image model; a non-square source such as "
        "digit_pairs' 8 x 16 needs config.model.input_width).")


def validate(config, *, num_devices: int, process_count: int = 1, check_data: bool = True) -> None:
  """Raises ConfigError for the first problem found in `config`; returns None if it is usable.

  Args:
    config: the training ConfigDict.
    num_devices: how many devices the mesh will span (all processes together).
    process_count: number of JAX processes feeding the global batch.
    check_data: also open config.data.data_dir (meta.json and markers of a latent cache, the
      image folder, the TFDS dataset; local or a bucket) and compare the data pipeline's input
      shape with the model's.
  """
  _check_finite(config)
  _check_training(config)
  _check_model(config)
  _check_mesh_and_batch(config, num_devices, process_count)
  _check_sampling(config)
  if check_data:
    _check_data(config)
    _check_text_cache(config)


def _check_text_cache(config) -> None:
  """config.data.text_cache must be a finished prompt-embedding cache with one caption per
  example, whose encoder, width and length the model and config.text agree with."""
  cache_dir = config.data.get("text_cache", "")
  if not cache_dir:
    return
  from dit_jax.data import sources, text_cache  # local: as _check_data
  try:
    meta, _ = text_cache.open_cache(cache_dir)
  except sources.DataDirError as e:
    raise ConfigError(f"config.data.text_cache={cache_dir}: {e.problem}") from e
  problems = text_cache.training_problems(meta, model_kwargs(config.model.to_dict()),
                                          dict(config.get("text") or {}))
  if problems:
    raise ConfigError(f"config.data.text_cache={cache_dir}: " + "; ".join(problems) + ".")

