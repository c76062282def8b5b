"""Checks configs/ and dit_jax.config_checks: every config error is caught before compiling and
names the field at fault.

References: the team contract's list of config fields; the paper's recipe (DIT-FACTS.md:
AdamW 1e-4, weight decay 0, batch 256, EMA 0.9999, latents x 0.18215) for configs/imagenet.py;
the variant table of DIT-FACTS.md for variant strings.
"""
import pathlib

import pytest

from configs import digits, imagenet
from dit_jax import config_checks, config_files

ROOT = pathlib.Path(__file__).resolve().parent.parent

REQUIRED_FIELDS = (
    "seed", "num_train_steps", "global_batch_size", "learning_rate", "weight_decay",
    "warmup_steps", "grad_clip_norm", "ema_decay", "checkpoint_every_steps", "keep_checkpoints",
    "log_every_steps", "sample_every_steps", "mesh", "logical_axis_rules", "model", "diffusion",
    "data", "sample")


@pytest.mark.parametrize("config", [
    digits.get_config(), digits.get_config("smoke"), imagenet.get_config(),
    imagenet.get_config("variant=B/4,res=512"), imagenet.get_config("smoke")])
def test_configs_have_the_contract_fields_and_validate(config):
  for name in REQUIRED_FIELDS:
    assert name in config, name
  for name in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"):
    assert name in config.mesh
  for name in ("sampler", "num_sampling_steps", "cfg_scale", "guidance"):
    assert name in config.sample
  for name in ("min_snr_gamma", "predict_v", "t_sampling", "logit_mean", "logit_std",
               "time_shift"):  # settable by flags
    assert name in config.diffusion
  config_checks.validate(config, num_devices=8, check_data=config.data.source == "digits")


def test_imagenet_config_is_the_paper_recipe():
  config = imagenet.get_config("variant=XL/2,res=256")
  assert (config.learning_rate, config.weight_decay, config.global_batch_size) == (1e-4, 0.0, 256)
  assert (config.ema_decay, config.warmup_steps, config.grad_clip_norm) == (0.9999, 0, 0.0)
  assert config.data.flip and config.data.latent_scale == 0.18215
  assert config.diffusion.learn_sigma and config.diffusion.diffusion_steps == 1000
  kw = config_checks.model_kwargs(config.model.to_dict())
  assert (kw["depth"], kw["hidden_size"], kw["num_heads"], kw["patch_size"]) == (28, 1152, 16, 2)
  assert kw["input_size"] == 32 and kw["in_channels"] == 4
  assert imagenet.get_config("variant=XL/2,res=512").model.input_size == 64


@pytest.mark.parametrize("arg", ["res=300", "variant", "source=jpegs", "colour=blue"])
def test_imagenet_bad_arguments(arg):
  with pytest.raises(ValueError, match="configs/imagenet.py"):
    imagenet.get_config(arg)


def _smoke():
  return digits.get_config("smoke")


@pytest.mark.parametrize("mutate, num_devices, process_count, field", [
    (lambda c: setattr(c, "global_batch_size", 12), 8, 1, "config.global_batch_size"),
    (lambda c: c.mesh.update(data=2, fsdp=2, tensor=2), 8, 1, None),  # 16 % 4 == 0: fine
    (lambda c: (setattr(c, "global_batch_size", 20), c.mesh.update(data=1, fsdp=8)), 8, 1,
     "config.global_batch_size"),
    (lambda c: setattr(c, "global_batch_size", 18), 2, 4, "process count"),
    (lambda c: c.mesh.update(data=3), 8, 1, "config.mesh"),
    (lambda c: c.mesh.update(data=2, fsdp=2, tensor=1), 8, 1, "config.mesh"),
    (lambda c: c.model.update(patch_size=3), 8, 1, "config.model.patch_size"),
    (lambda c: c.model.update(num_heads=3), 8, 1, "config.model.num_heads"),
    (lambda c: c.model.update(variant="XXL/2"), 8, 1, "config.model.variant"),
    (lambda c: c.model.update(variant="S/3"), 8, 1, "config.model.variant"),
    (lambda c: c.model.update(learn_sigma=False), 8, 1, "learn_sigma"),
    (lambda c: c.data.update(image_size=16), 8, 1, "config.data"),
    (lambda c: setattr(c, "ema_decay", 1.5), 8, 1, "config.ema_decay"),
    (lambda c: setattr(c, "lr_schedule", "step"), 8, 1, "config.lr_schedule"),
    (lambda c: c.diffusion.update(objective="flow", learn_sigma=False), 8, 1,
     "config.sample.sampler"),  # a flow run with the Gaussian sampler would fail at its first grid
    (lambda c: c.sample.update(sampler="euler"), 8, 1, "config.sample.sampler"),
    (lambda c: c.sample.update(guidance="some"), 8, 1, "config.sample.guidance"),
    (lambda c: setattr(c, "global_batch_size", 0), 8, 1, "config.global_batch_size=0 must be"),
    (lambda c: setattr(c, "global_batch_size", -16), 8, 1, "config.global_batch_size=-16"),
    (lambda c: setattr(c, "keep_checkpoints", -1), 8, 1, "config.keep_checkpoints=-1 must be"),
    (lambda c: setattr(c, "keep_period", -5), 8, 1, "config.keep_period=-5 must be"),
    # Non-finite floats, named by field (`nan > 0` would silently turn clipping off).
    (lambda c: setattr(c, "learning_rate", float("nan")), 8, 1, "config.learning_rate=nan"),
    (lambda c: setattr(c, "ema_decay", float("nan")), 8, 1, "config.ema_decay=nan is not a finite"),
    (lambda c: setattr(c, "weight_decay", float("inf")), 8, 1, "config.weight_decay=inf"),
    (lambda c: setattr(c, "adam_b2", float("-inf")), 8, 1, "config.adam_b2=-inf"),
    (lambda c: setattr(c, "grad_clip_norm", float("nan")), 8, 1, "config.grad_clip_norm=nan"),
    (lambda c: c.diffusion.update(logit_std=float("nan")), 8, 1, "config.diffusion.logit_std=nan"),
    (lambda c: c.diffusion.update(min_snr_gamma=-1.0), 8, 1, "config.diffusion.min_snr_gamma"),
    (lambda c: (c.diffusion.update(objective="flow", learn_sigma=False, min_snr_gamma=5.0),
                c.model.update(learn_sigma=False), c.sample.update(sampler="euler")), 8, 1,
     "config.diffusion.min_snr_gamma=5.0 weights the Gaussian"),
    (lambda c: (c.diffusion.update(objective="flow", learn_sigma=False, predict_v=True),
                c.model.update(learn_sigma=False), c.sample.update(sampler="euler")), 8, 1,
     "config.diffusion.predict_v=True picks the Gaussian objective's target"),
    (lambda c: c.diffusion.update(predict_v=True, predict_xstart=True), 8, 1,
     "predict_xstart=True and predict_v=True"),
    (lambda c: setattr(c, "adam_mu_dtype", "float16"), 8, 1, "config.adam_mu_dtype='float16'"),
    # Text fields, checked before the model is built (blocks.text_problems).
    (lambda c: c.model.update(block_type="mmdit"), 8, 1,
     "config.model.block_type='mmdit' is a text design"),
    (lambda c: c.model.update(context_dim=16), 8, 1,
     "config.model.block_type='adaln_zero' does not read text"),
    (lambda c: c.model.update(text_positions=True), 8, 1,
     "config.model.text_positions=True adds positions to the model's own text encoder"),
])
def test_config_errors_name_the_field(mutate, num_devices, process_count, field):
  config = _smoke()
  config.model.variant = ""  # the smoke model's own sizes unless a case sets a variant
  mutate(config)
  if field is None:
    config_checks.validate(config, num_devices=num_devices, process_count=process_count)
    return
  with pytest.raises(config_checks.ConfigError, match=field.replace(".", r"\.")):
    config_checks.validate(config, num_devices=num_devices, process_count=process_count)


def test_config_files_load_by_path_and_set_only_defined_fields():
  """`load_spec` is what `--config PATH:ARG` loads; `override` sets dotted fields and refuses a
  field the config does not define (the sweep and the moving-digits sweep script rely on it)."""
  loaded = config_files.load_spec(str(ROOT / "configs/imagenet.py") + ":variant=B/4,res=512")
  assert loaded.to_dict() == imagenet.get_config("variant=B/4,res=512").to_dict()
  config = config_files.override(digits.get_config(), {"model.depth": 2, "ema_decay": 0.9},
                                 "configs/digits.py")
  assert (config.model.depth, config.ema_decay) == (2, 0.9)
  for field in ("model.width", "ema_decy", "nope.depth"):
    with pytest.raises(KeyError, match=f"{field}.*configs/digits.py"):
      config_files.override(digits.get_config(), {field: 1}, "configs/digits.py")
  with pytest.raises(FileNotFoundError, match="configs/nope.py"):
    config_files.load("configs/nope.py")
  with pytest.raises(ValueError, match="README.md' is not a Python file"):
    config_files.load(ROOT / "README.md")
