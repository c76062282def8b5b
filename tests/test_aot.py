"""dit_jax.aot: ahead-of-time compile of the real train step for a TPU topology, on this CPU.

Compiles the tiny "smoke" config (width 128, so TPU tile padding stays small) for a v5e:2x2 slice
(4 compile-only chips, libtpu) and checks the per-chip memory against the state's size computed
from the parameter count (params, EMA and Adam's two moments, float32, replicated over a
data-parallel mesh; donated, so aliased), the
datasheet HBM of v5e (16 GB), and that the compiler's estimates are positive and labeled, or
absent when XLA counted a scanned block only once. Errors: unknown topologies, and configs that
cannot be sharded on the slice, fail before compiling.
"""
import pathlib

import pytest

from dit_jax import aot, config_checks, config_files, train_state
from dit_jax.models import dit

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOPOLOGY = "v5e:2x2"
CHIPS = 4


def smoke_config():
  config = config_files.load(ROOT / "configs/imagenet.py", "smoke")
  config.model.update(hidden_size=128, num_heads=2)  # lane-aligned: padding < 1% of the state
  return config


def test_compile_smoke_for_v5e_slice():
  config = smoke_config()
  r = aot.compile_for_topology(config, TOPOLOGY)
  assert (r.num_chips, r.device_kind) == (CHIPS, "TPU v5 lite")
  assert r.mesh == {"data": CHIPS, "fsdp": 1, "sequence": 1, "tensor": 1}
  params = dit.num_params(train_state.build_model(config))
  state_bytes = 4 * params * 4  # params, ema_params, Adam mu and nu; float32; replicated
  batch_bytes = config.global_batch_size // CHIPS * (8 * 8 * 4 + 1) * 4
  assert state_bytes <= r.argument_bytes <= 1.02 * state_bytes + batch_bytes
  assert state_bytes <= r.alias_bytes <= r.argument_bytes  # the donated state is updated in place
  assert r.total_bytes > r.argument_bytes
  assert r.hbm_bytes == 16 * 1024**3 and r.fits is True
  assert r.estimated_step_s > 0 and r.estimated_images_per_s_per_chip > 0
  assert 0 < r.estimated_mfu < 1
  text = aot.format_report(r)
  assert "compiler estimate" in text and "FITS" in text


@pytest.mark.parametrize("topology", ["v9:2x2", "v5e", "tpu-v5e-8"])
def test_unknown_topology(topology):
  with pytest.raises(ValueError, match="Unknown TPU topology"):
    aot.topology_devices(topology)


def test_bad_shape_for_family():
  with pytest.raises(ValueError, match="libtpu rejected topology 'v5e:3x3'"):
    aot.topology_devices("v5e:3x3")


def test_batch_not_divisible_fails_before_compiling():
  config = smoke_config()
  config.global_batch_size = 6
  with pytest.raises(config_checks.ConfigError, match="global_batch_size=6"):
    aot.compile_for_topology(config, TOPOLOGY)


def test_mesh_product_mismatch_fails_before_compiling():
  config = smoke_config()
  config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(config_checks.ConfigError, match="config.mesh"):
    aot.compile_for_topology(config, TOPOLOGY)


def test_scanned_blocks_give_no_estimate():
  """XLA's cost analysis counts a scanned block once: the tool must not turn that into a speed."""
  config = smoke_config()
  config.model.scan_blocks = True
  r = aot.compile_for_topology(config, TOPOLOGY)
  assert r.fits is True and r.compiler_flops_per_chip > 0
  assert r.estimated_step_s is None and r.estimated_mfu is None
  assert "loop bodies once" in r.estimate_note


def test_compile_text_model_for_v5e_slice():
  """A cross-attention text model compiles with its captions in the batch: the arguments hold
  the state plus each chip's rows of context (float32) and mask (bool)."""
  config = smoke_config()
  length, width = 16, 128
  config.model.update(num_classes=1, block_type="cross_attention", context_dim=width,
                      context_length=length)
  r = aot.compile_for_topology(config, TOPOLOGY)
  params = dit.num_params(train_state.build_model(config))
  rows = config.global_batch_size // CHIPS
  batch_bytes = rows * ((8 * 8 * 4 + 1) * 4 + length * width * 4 + length)
  assert 4 * params * 4 + batch_bytes <= r.argument_bytes <= 1.02 * 4 * params * 4 + batch_bytes
  assert r.fits is True
