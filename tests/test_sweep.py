"""Tests for dit_jax.sweep: grid expansion and naming, config overrides, the power-law fit, the
report files, and the TPU launch commands.

References: the power-law fit must recover exponents chosen in advance on synthetic data
(closed form y = a * x^b); training compute must equal Gflops x batch x steps x 3 (the formula
in the issue) with Gflops from dit_jax.flops; launch commands are checked by running them
through launch/up.sh --dry_run and parsing the gcloud lines.
"""
import csv
import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from dit_jax import flops, sweep
from dit_jax.models import dit

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRID = dict(
    config="configs/digits.py:smoke",
    fixed={"num_train_steps": 6},
    axes=[{"model.patch_size": [4, 2]},
          {"model.hidden_size": [32, 64], "model.num_heads": [2, 4]},
          {"model.depth": [1, 2]}],
)


def test_expand_product_of_zipped_axes_and_names():
  runs = sweep.expand(GRID)
  assert [r.name for r in runs] == [
      "p4_w32_h2_d1", "p4_w32_h2_d2", "p4_w64_h4_d1", "p4_w64_h4_d2",
      "p2_w32_h2_d1", "p2_w32_h2_d2", "p2_w64_h4_d1", "p2_w64_h4_d2"]
  assert runs[2].values == {"model.patch_size": 4, "model.hidden_size": 64,
                            "model.num_heads": 4, "model.depth": 1}
  kept = sweep.expand(dict(GRID, keep=lambda v: v["model.depth"] * v["model.patch_size"] < 8))
  assert [r.name for r in kept] == ["p4_w32_h2_d1", "p4_w64_h4_d1", "p2_w32_h2_d1",
                                    "p2_w32_h2_d2", "p2_w64_h4_d1", "p2_w64_h4_d2"]


def test_expand_naming_of_other_fields_and_errors():
  [run] = sweep.expand(dict(config="x", axes=[{"model.variant": ["XL/2"]},
                                              {"learning_rate": [3e-4]}, {"seed": [1]}]))
  assert run.name == "XL-2_lr0.0003_seed1"
  with pytest.raises(ValueError, match="equally long"):
    sweep.expand(dict(config="x", axes=[{"model.depth": [1, 2], "model.num_heads": [1]}]))
  with pytest.raises(ValueError, match="share a short name"):
    sweep.expand(dict(config="x", axes=[{"model.depth": [1]}, {"data.depth": [1]}]))
  with pytest.raises(ValueError, match="same name"):
    sweep.expand(dict(config="x", axes=[{"learning_rate": [1e-4, 1.000001e-4]}]))


def test_build_config_and_model_stats(monkeypatch):
  monkeypatch.chdir(ROOT)
  runs = sweep.expand(GRID)
  config = sweep.build_config(GRID, runs[-1])
  assert (config.model.patch_size, config.model.hidden_size, config.model.depth) == (2, 64, 2)
  assert config.num_train_steps == 6
  stats = sweep.model_stats(config)
  model = dit.build_model(config.model)
  assert stats["gflops"] == pytest.approx(flops.dit_gflops(model))
  assert stats["params"] == dit.num_params(model)
  assert stats["train_compute"] == pytest.approx(
      stats["gflops"] * config.global_batch_size * 6 * 3)
  small = sweep.model_stats(sweep.build_config(GRID, runs[0]))
  assert small["gflops"] < stats["gflops"] and small["params"] < stats["params"]
  with pytest.raises(KeyError, match="model.width"):
    sweep.build_config(dict(GRID, fixed={"model.width": 3}), runs[0])


@pytest.mark.parametrize("a,b", [(3.0, -0.3), (0.02, 0.5), (7.0, -1.2)])
def test_power_law_fit_recovers_exponent(a, b):
  rng = np.random.default_rng(0)
  x = np.geomspace(0.01, 100.0, 12)
  y = a * x**b * np.exp(rng.normal(0.0, 0.02, x.shape))
  fit_a, fit_b = sweep.fit_power_law(x, y)
  assert fit_b == pytest.approx(b, abs=0.02)
  assert fit_a == pytest.approx(a, rel=0.05)
  exact_a, exact_b = sweep.fit_power_law(x, a * x**b)
  assert (exact_a, exact_b) == (pytest.approx(a), pytest.approx(b))
  with pytest.raises(ValueError, match="at least 2"):
    sweep.fit_power_law([1.0, 2.0], [0.0, 1.0])


def test_final_loss_averages_the_last_tenth():
  scalars = {"loss": [(s, 10.0 if s < 900 else 1.0 + (s % 2)) for s in range(0, 1001, 10)]}
  assert sweep.final_loss(scalars, 1000) == pytest.approx(np.mean(
      [1.0 + (s % 2) for s in range(900, 1001, 10)]))
  with pytest.raises(ValueError, match="no training loss"):
    sweep.final_loss({"lr": [(0, 1.0)]}, 10)


def test_write_report(tmp_path):
  gflops = np.array([0.01, 0.03, 0.1, 0.3])
  rows = [dict(name=f"r{i}", gflops=g, params=int(g * 1e6), train_compute=g * 1e5,
               final_loss=0.5 * g**-0.1, fid=20.0 * g**-0.4, fd=2.0 * g**-0.5,
               accuracy=1 - 0.01 * g**-0.3, error=0.01 * g**-0.3)
          for i, g in enumerate(gflops[::-1])]
  exponents = sweep.write_report(rows, str(tmp_path))
  assert exponents["final_loss vs gflops"] == pytest.approx(-0.1)
  assert exponents["fd vs gflops"] == pytest.approx(-0.5)
  assert exponents["fid vs gflops"] == pytest.approx(-0.4)  # the paper's plot: FID vs Gflops
  assert exponents["error vs train_compute"] == pytest.approx(-0.3)
  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == ["r3", "r2", "r1", "r0"]  # sorted by Gflops
  md = (tmp_path / "results.md").read_text()
  assert md.startswith("| name | gflops |") and "fd vs gflops: b = -0.500" in md
  for png in ("vs_gflops.png", "vs_train_compute.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_fid_evaluation_samples_then_runs_dit_jax_evaluate(tmp_path, monkeypatch):
  """quality="fid": the run's samples go to `dit_jax.evaluate` with the grid's reference."""
  calls = []

  def fake_run(cmd, check):
    calls.append(cmd)
    assert check
    if cmd[2] == "dit_jax.evaluate":
      out = next(a.split("=", 1)[1] for a in cmd if a.startswith("--output="))
      pathlib.Path(out).write_text(json.dumps(dict(fid=3.5, sfid=5.0, inception_score=200.0,
                                                   precision=0.8, recall=None, num_samples=64)))
  monkeypatch.setattr(subprocess, "run", fake_run)
  evaluation = dict(quality="fid", reference="/refs/ref.npz", inception_weights="/w/i.pth",
                    num_samples=64, num_sampling_steps=50)
  got = sweep.evaluate_quality(evaluation, str(tmp_path))
  assert got == dict(fid=3.5, sfid=5.0, inception_score=200.0, precision=0.8)  # None dropped
  sample_cmd, evaluate_cmd = calls
  assert sample_cmd[2] == "dit_jax.sample" and "--num_samples=64" in sample_cmd
  assert "--num_sampling_steps=50" in sample_cmd and "--eval=false" in sample_cmd
  samples = next(a.split("=", 1)[1] for a in sample_cmd if a.startswith("--output="))
  assert evaluate_cmd[3:6] == [f"--samples={samples}", "--reference=/refs/ref.npz",
                               f"--output={tmp_path / sweep.FID_FILE}"]
  assert "--inception_weights=/w/i.pth" in evaluate_cmd
  with pytest.raises(ValueError, match="needs reference="):
    sweep.evaluate_quality(dict(quality="fid"), str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown; use one of \('digits', 'fid'\)"):
    sweep.evaluate_quality(dict(quality="lpips"), str(tmp_path))


def test_launch_command_dry_runs_through_up_sh():
  [run] = sweep.expand(dict(config="x", axes=[{"model.variant": ["XL/2"]}]))
  grid = dict(config="configs/imagenet.py:res=256", fixed={"num_train_steps": 400000}, axes=[])
  cmd = sweep.launch_command(grid, run, "gs://b/sweep/XL-2", "Scale",
                             "--zone=us-east5-a --accelerator_type=v5p-64 --dry_run")
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
  gcloud = [shlex.split(l[2:]) for l in out.splitlines() if l.startswith("+ gcloud")]
  assert gcloud[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "scale-xl-2"]
  assert "--accelerator-type=v5p-64" in gcloud[0]
  train = shlex.split([a for a in gcloud[-1] if a.startswith("--command=")][0][10:])
  assert "--workdir=gs://b/sweep/XL-2" in train
  assert "--config.model.variant=XL/2" in train and "--config.num_train_steps=400000" in train


MICRO_GRID = '''
def get_sweep():
  return dict(
      config="configs/digits.py:smoke",
      fixed={"num_train_steps": 4, "checkpoint_every_steps": 4, "log_every_steps": 2,
             "warmup_steps": 1},
      axes=[{"model.patch_size": [4, 2]}],
      evaluation=dict(quality="digits", num_samples=20, sampler="ddim", num_sampling_steps=2))
'''


def _set_flags(monkeypatch, **values):
  for name, value in values.items():
    monkeypatch.setattr(sweep.FLAGS, name, value)


def test_print_mode_prints_one_up_sh_per_run(tmp_path, monkeypatch, capsys):
  grid_file = tmp_path / "micro.py"
  grid_file.write_text(MICRO_GRID)
  monkeypatch.chdir(ROOT)
  _set_flags(monkeypatch, grid=str(grid_file), run="print", workdir_root="gs://b/sweep",
             report=False, tpu_prefix="dit", launch_args="--zone=z --accelerator_type=v5p-8")
  sweep.main([])
  lines = [shlex.split(l) for l in capsys.readouterr().out.splitlines() if "up.sh" in l]
  assert [l[l.index("--name") + 1] for l in lines] == ["dit-p4", "dit-p2"]
  assert "--workdir" in lines[1] and lines[1][lines[1].index("--workdir") + 1] == "gs://b/sweep/p2"
  assert "--config.model.patch_size=2" in lines[1] and "--accelerator_type=v5p-8" in lines[1]
  _set_flags(monkeypatch, workdir_root="/tmp/local")
  with pytest.raises(sweep.app.UsageError, match="gs://"):
    sweep.main([])


@pytest.mark.slow
def test_micro_sweep_end_to_end(tmp_path, monkeypatch, capsys):
  """Two real 4-step runs: train (subprocess), sample + score, then the table and plots."""
  grid_file = tmp_path / "micro.py"
  grid_file.write_text(MICRO_GRID)
  root, report = tmp_path / "runs", tmp_path / "report"
  proc = subprocess.run(
      [sys.executable, "-m", "dit_jax.sweep", f"--grid={grid_file}", f"--workdir_root={root}",
       "--report", f"--report_dir={report}"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "power-law exponent final_loss vs gflops" in proc.stdout
  with open(report / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == ["p4", "p2"]  # ascending Gflops
  for r in table:
    assert 0.0 <= float(r["accuracy"]) <= 1.0 and float(r["fd"]) > 0
    assert np.isfinite(float(r["final_loss"])) and int(r["params"]) > 0
    assert float(r["train_compute"]) == pytest.approx(float(r["gflops"]) * 16 * 4 * 3)
  assert "| p2 |" in (report / "results.md").read_text()
  for png in ("vs_gflops.png", "vs_train_compute.png"):
    assert (report / png).stat().st_size > 1000
  # A second invocation finds both runs finished: nothing retrained, the report comes from cache.
  monkeypatch.chdir(ROOT)
  _set_flags(monkeypatch, grid=str(grid_file), workdir_root=str(root), report=True,
             report_dir=str(tmp_path / "report2"), run="local")
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"unexpected run {a}"))
  sweep.main([])
  out = capsys.readouterr().out
  assert "p4: finished, skipped" in out and "p2: finished, skipped" in out
  assert (tmp_path / "report2" / "results.csv").read_text() == (report / "results.csv").read_text()
