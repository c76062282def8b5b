"""benchmarks/moving_digits_sweep.py: the accelerator-side recipe comparison of docs/video.md.

The data it carries to the GPU machine must be exactly the training job's videos (checked
against MovingDigitsSource), and a run must train, sample and score end to end (a tiny one
here, scored also part way), with a bad override recorded as that run's error while the next run
goes on.
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dit_jax.data import moving_digits

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "moving_digits_sweep.py"
TINY = ("num_train_steps=4,model.hidden_size=32,model.depth=2,model.num_heads=2,"
        "sample.num_sampling_steps=3")


@pytest.fixture(scope="module")
def sweep_module():
  spec = importlib.util.spec_from_file_location("moving_digits_sweep", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "train.npz"
  subprocess.run([sys.executable, str(SCRIPT), "--write_data", str(path)], cwd=ROOT, check=True,
                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
  return path


def test_carried_videos_are_the_training_jobs_videos(sweep_module, data_file):
  videos, labels = sweep_module.load_data(str(data_file), sweep_module.build_config({}))
  source = moving_digits.MovingDigitsSource()
  assert len(labels) == len(source)
  for i in (0, 1, 777, len(source) - 1):
    np.testing.assert_array_equal(videos[i], source[i]["x"])
    assert labels[i] == source[i]["y"]


def test_a_shape_mismatch_and_unknown_overrides_are_refused(sweep_module, data_file):
  with pytest.raises(ValueError, match="write the data again"):
    sweep_module.load_data(str(data_file), sweep_module.build_config({"data.num_frames": 4}))
  for key in ("ema_decy", "model.nope"):
    with pytest.raises(KeyError, match=key):
      sweep_module.build_config({key: 1})


@pytest.mark.slow
def test_tiny_runs_train_sample_and_score(data_file, tmp_path):
  out = tmp_path / "sweep.json"
  subprocess.run([sys.executable, str(SCRIPT), "--data", str(data_file), "--json", str(out),
                  "--videos", "10", "--score_every", "2", "--run", f"tiny:8:{TINY}",
                  "--run", "typo:8:ema_decy=0.9"],
                 cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  tiny, typo = json.loads(out.read_text())
  assert tiny["steps"] == 4 and tiny["batch"] == 8 and len(tiny["losses"]) == 1
  assert [step for step, _ in tiny["quality_by_step"]] == [2, 4]
  assert tiny["quality"] == tiny["quality_by_step"][-1][1]
  assert tiny["quality"]["num_samples"] == 10
  assert 0.0 <= tiny["quality"]["frame_accuracy"] <= 1.0
  assert "ema_decy" in typo["error"]
