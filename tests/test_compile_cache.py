"""config.compilation_cache_dir: a second run loads the programs the first one compiled.

Two smoke trainings as a user runs them (separate processes, fresh workdirs, the same cache
directory): the first writes entries, among them the train step's; the second writes none,
because jax found every program it needed in the cache (an entry is written only on a miss).
"""
import os
import pathlib
import subprocess
import sys

import pytest

from dit_jax import compile_cache

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train(workdir, cache_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "dit_jax.train", "--config", "configs/digits.py:smoke",
       "--workdir", str(workdir), "--config.num_train_steps=2", "--config.sample_every_steps=0",
       f"--config.compilation_cache_dir={cache_dir}"],
      cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return sorted(p.name for p in pathlib.Path(cache_dir).iterdir() if p.name.endswith("-cache"))


@pytest.mark.slow
def test_second_run_reuses_the_first_runs_programs(tmp_path):
  cache_dir = tmp_path / "jax-cache"
  first = _train(tmp_path / "run1", cache_dir)
  assert any(name.startswith("jit_step_in_mesh-") for name in first), first  # the train step
  assert _train(tmp_path / "run2", cache_dir) == first


def test_empty_dir_leaves_the_cache_off():
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_compilation_cache_dir
  compile_cache.enable("")
  assert jax.config.jax_compilation_cache_dir == before
