"""Test setup: every test sees 8 fake CPU devices, so sharding is exercised without accelerators.

The flags must be set before JAX initializes its backends, hence at import time here.
"""
import atexit
import os
import shutil
import sys
import tempfile
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
# One persistent compilation cache for the whole session, inherited by the subprocesses that
# tests start: the many tests that build the same model (the smoke configs above all) compile
# each program once. A cached program is the compiled program (same HLO, same compiler), so no
# result changes; a cache directory set by the caller is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="dit_jax_tests_jax_cache_")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# TensorFlow (pulled in by clu writers / tfds) must not grab accelerators or spam logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The registry's torchvision (pulled in by pytorch-fid, the FID oracle) is a CUDA build whose
# operator registrations fail beside the CPU torch; diffusers and pytorch-fid only need its
# pure-Python modules, so its registrations module is replaced by an empty one (STACK-NOTES.md),
# before any test file imports diffusers or pytorch_fid.
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's multiprocessing prefetch reads absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests (seconds to minutes on a 2-core CPU)")


def pytest_collection_modifyitems(items):
  """Slow tests run first (collection order kept otherwise): under the README's `-n 2` the
  long tests start at once and the many short ones fill in after them, so the two workers
  finish together instead of one running a long test alone at the end."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


@pytest.fixture(scope="session")
def devices():
  """The 8 fake CPU devices; fails loudly if the flag did not take effect."""
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}: set XLA_FLAGS before importing jax"
  return devs


@pytest.fixture(scope="module")
def fresh_classifier_cache(tmp_path_factory):
  """A fresh $DIT_JAX_CACHE for a module: the digit classifier of dit_jax.quality is trained
  there (deterministically) once and reused, and the in-process caches are cleared around it."""
  from dit_jax import quality  # pylint: disable=import-outside-toplevel
  mp = pytest.MonkeyPatch()
  mp.setenv(quality.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
  quality.load_classifier.cache_clear()
  quality.real_reference.cache_clear()
  yield
  mp.undo()
  quality.load_classifier.cache_clear()
  quality.real_reference.cache_clear()
