"""dit_jax.bench: real train steps and guided sampling of a tiny config on the 8 fake CPU devices.

Checks the result's fields against what a run must give, independently of the benchmark's own
arithmetic: images/s = global batch / mean step time, TFLOP/s per device = 3 x 2 x Gflops x
images/s / devices (the paper's convention, DESIGN.md), MFU None on CPU (no datasheet peak),
versions equal to the imported libraries. Also checks that the benchmark imports and runs with
tfds, grain, clu and tensorflow made unimportable (it must run on a bare accelerator machine),
and that an empty batch or an unwritable --json path is refused before anything is timed.
"""
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys

import jax
import pytest

from dit_jax import bench, config_files, flops, profile_summary, sharding, train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("tensorflow", "tensorflow_datasets", "grain", "clu")
SMOKE = "configs/imagenet.py:smoke"


def smoke_config():
  return config_files.load(ROOT / "configs/imagenet.py", "smoke")


# Runs the CLI's main with the heavy modules blocked (an import of any raises ImportError).
# The blocked modules behave as on a machine without them: importing raises ModuleNotFoundError
# and they are absent from sys.modules (a None entry there would read as "loaded" to libraries
# that probe sys.modules, as einops does for its backends).
_BLOCKED_RUN = """
import importlib.abc
import sys


class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {blocked!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}} (not installed on a bare machine)")
    return None


sys.meta_path.insert(0, Absent())
from absl import flags
from dit_jax import bench
bench.define_flags()
flags.FLAGS(["bench"] + {argv!r})
bench.main([])
print("LOADED", sorted({{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}}))
"""


def test_train_cli_json_without_heavy_modules(tmp_path):
  out = tmp_path / "bench.json"
  steps, per_device = 2, 2
  argv = ["--config", SMOKE, "--batch_per_device", str(per_device), "--steps", str(steps),
          "--warmup", "1", "--json", str(out), "--profile", str(tmp_path / "profile")]
  code = _BLOCKED_RUN.format(blocked=HEAVY_MODULES, argv=argv)
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = proc.stdout.split("LOADED")[-1]
  assert not [m for m in HEAVY_MODULES if f"'{m}'" in loaded], loaded
  assert "images/s" in proc.stdout

  r = json.loads(out.read_text())
  n = jax.device_count()
  assert r["mode"] == "train"
  assert r["global_batch_size"] == per_device * n == 16
  st = r["step_time_s"]
  assert st["n"] == steps and 0 < st["min"] <= st["median"] <= st["max"]
  assert r["images_per_s"] == pytest.approx(r["global_batch_size"] / st["mean"])
  assert r["images_per_s_per_device"] == pytest.approx(r["images_per_s"] / n)
  flop = 3 * 2 * r["model_gflops_per_image"] * 1e9 * r["images_per_s"] / n
  assert r["tflops_per_s_per_device"] == pytest.approx(flop / 1e12)
  assert r["model_gflops_per_image"] > 0
  assert r["mfu"] is None and r["peak_tflops_per_device"] is None  # CPUs have no datasheet peak
  assert r["compile_s"] > 0 and math.isfinite(r["loss"]) and r["process_cpu_s_per_step"] > 0
  assert r["mesh"] == {"data": n, "fsdp": 1, "sequence": 1, "tensor": 1}
  v = r["versions"]
  assert (v["jax"], v["device_count"], v["platform"]) == (jax.__version__, n, "cpu")
  assert "python -m dit_jax.bench" in r["command"]
  # The profiled steps left a trace; a CPU run has no device lines to summarize.
  assert profile_summary.latest_trace(str(tmp_path / "profile")) and r["profile"] == {}


def test_profile_summary_totals_device_time_per_kernel():
  meta = [dict(ph="M", pid=1, name="process_name", args=dict(name="/host:CPU")),
          dict(ph="M", pid=2, name="process_name", args=dict(name="/device:GPU:0")),
          dict(ph="M", pid=2, tid=7, name="thread_name", args=dict(name="XLA Ops"))]
  ops = [("gemm", 30.0), ("attention", 10.0), ("gemm", 50.0), ("layer_norm", 10.0)]
  events = meta + [dict(ph="X", pid=2, tid=7, name=n, ts=i, dur=d) for i, (n, d) in enumerate(ops)]
  events.append(dict(ph="X", pid=1, tid=3, name="python", ts=0, dur=1e6))  # host: left out
  summary = profile_summary.summarize(events, top=2)
  assert list(summary) == ["/device:GPU:0 / XLA Ops"]
  line = summary["/device:GPU:0 / XLA Ops"]
  assert (line["total_us"], line["events"]) == (100.0, 4)
  assert line["top"] == [["gemm", 80.0, 2, 0.8], ["attention", 10.0, 1, 0.1]]
  text = "\n".join(bench.format_profile(summary))
  assert "80.0%" in text and "gemm" in text


def test_sample_mode(devices):
  r = bench.run_sample(smoke_config(), batch_per_device=1, repeats=1, num_steps=3, cfg_scale=4.0)
  assert r["mode"] == "sample" and r["num_sampling_steps"] == 3
  assert r["global_batch_size"] == len(devices)
  assert r["images_per_s"] == pytest.approx(len(devices) / r["step_time_s"]["mean"])
  # Each sampled image costs steps x 2 (conditional + null halves) x 2 FLOP/MAC x Gflops.
  flop = 3 * 2 * 2 * r["model_gflops_per_image"] * 1e9 * r["images_per_s"] / len(devices)
  assert r["tflops_per_s_per_device"] == pytest.approx(flop / 1e12)
  assert r["mfu"] is None


def test_summarize_matches_statistics():
  times = [0.4, 0.1, 0.3, 0.2]
  s = bench.summarize(times)
  assert s["mean"] == pytest.approx(0.25)
  assert s["std"] == pytest.approx(statistics.pstdev(times))
  assert (s["min"], s["median"], s["max"], s["n"]) == (0.1, pytest.approx(0.25), 0.4, 4)


@pytest.mark.parametrize("flags,message", [
    (["--batch_per_device", "0"], "flag --batch_per_device=0: 0 is not a positive integer"),
    (["--json", "{file}/bench.json"],
     "--json {file}/bench.json: cannot create the directory {file}: {file} is a file"),
])
def test_cli_checks_flags_before_running(tmp_path, flags, message):
  (tmp_path / "file").write_text("x")
  flags = [f.format(file=tmp_path / "file") for f in flags]
  proc = subprocess.run([sys.executable, "-m", "dit_jax.bench", "--config", SMOKE, "--steps", "1",
                         *flags], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and "images/s" not in proc.stdout  # refused before timing anything
  assert message.format(file=tmp_path / "file") in proc.stderr, proc.stderr[-3000:]


def test_api_refuses_an_empty_batch():
  with pytest.raises(ValueError, match="--batch_per_device=0: give at least 1 image per device"):
    bench.run_train(smoke_config(), batch_per_device=0, steps=1)


def test_loop_mode_reports_the_loop_next_to_the_step(devices):
  """The real training loop (digits smoke, in-memory) after train mode on the same config."""
  steps = 3
  config = config_files.load(ROOT / "configs/digits.py", "smoke")
  r = bench.run_loop(config, batch_per_device=1, steps=steps, warmup=1)
  assert r["mode"] == "loop" and r["timed_steps"] == steps
  assert r["global_batch_size"] == len(devices)
  assert r["images_per_s"] == pytest.approx(len(devices) / r["step_time_s"]["mean"])
  assert r["step_images_per_s"] > 0 and r["process_cpu_s_per_step"] > 0
  assert r["step_process_cpu_s_per_step"] > 0
  assert r["loop_vs_step"] == pytest.approx(r["images_per_s"] / r["step_images_per_s"])
  assert r["loop_total_s"] > r["step_time_s"]["mean"] * steps
  text = bench.format_result(r)
  assert f"step mode: images/s {r['step_images_per_s']:.2f}" in text
  assert f"loop/step {r['loop_vs_step']:.3f}" in text


def test_loop_mode_needs_a_warmup_window():
  with pytest.raises(ValueError, match="--warmup=0: loop mode needs at least 1"):
    bench.run_loop(smoke_config(), batch_per_device=1, steps=1, warmup=0)


def test_video_shapes(devices):
  """The benchmark times video models as it does images (issue 15): videos (B, F, H, W, C),
  Gflops per video from the model's own count."""
  config = config_files.load(ROOT / "configs/video.py", "smoke,layout=factorized,pt=2")
  r = bench.run_train(config, batch_per_device=1, steps=1, warmup=1)
  model = train_state.build_model(config)
  assert model.input_shape == (4, 8, 8, 4) and model.attention_layout == "factorized"
  assert r["model_gflops_per_image"] == pytest.approx(flops.dit_gflops(model))
  assert math.isfinite(r["loss"]) and r["global_batch_size"] == len(devices)


@pytest.mark.parametrize("vocab", [0, 16], ids=["embeddings", "token_ids"])
def test_text_models(devices, vocab):
  """Text models are timed with full-length random captions: encoder outputs (B, L, D), or
  token ids for a model with its own encoder (issue 16); sample mode (class guidance) refuses."""
  config = smoke_config()
  config.model.update(num_classes=1, block_type="cross_attention", context_dim=16,
                      context_length=5, text_vocab_size=vocab)
  batch = bench.synthetic_batch(config, sharding.create_mesh({"data": -1}, devices), 8)
  assert batch["context"].shape == ((8, 5) if vocab else (8, 5, 16))
  assert batch["context_mask"].shape == (8, 5) and bool(batch["context_mask"].all())
  r = bench.run_train(config, batch_per_device=1, steps=1, warmup=1)
  model = train_state.build_model(config)
  assert r["model_gflops_per_image"] == pytest.approx(flops.dit_gflops(model))
  assert math.isfinite(r["loss"])
  with pytest.raises(ValueError, match="this is a text model"):
    bench.run_sample(config, batch_per_device=1, repeats=1, num_steps=2)
