"""dit_jax.bench_matrix: run specs, per-run config overrides and per-run XLA options.

The XLA options must reach the train step's compile of that run only: a run given
``xla_dump_to=DIR`` leaves XLA's dump files in DIR (observable from outside the benchmark), an
unknown option is refused by XLA itself and recorded as that run's error, and a run without
options dumps nothing.
"""
import pytest

from dit_jax import bench_matrix
from tests.test_bench import smoke_config


def test_parse_run_reads_name_batch_and_literal_overrides():
  name, batch, overrides = bench_matrix.parse_run(
      "lever:16:model.scan_blocks=True,adam_mu_dtype=bfloat16,xla_gpu_enable_command_buffer=")
  assert (name, batch) == ("lever", 16)
  assert overrides == {"model.scan_blocks": True, "adam_mu_dtype": "bfloat16",
                       "xla_gpu_enable_command_buffer": ""}


@pytest.mark.parametrize("spec", ["lever", "lever:0", ":8", "lever:8:scan_blocks"])
def test_parse_run_names_the_expected_form(spec):
  with pytest.raises(ValueError, match="NAME:BATCH_PER_DEVICE|KEY=VALUE"):
    bench_matrix.parse_run(spec)


def test_xla_options_reach_that_runs_compile_only(devices, tmp_path):
  dump = tmp_path / "dump"
  config = smoke_config()
  with_options = bench_matrix.run_one(
      config, "dumped", 1, {"xla_dump_to": str(dump), "xla_dump_hlo_as_text": True},
      steps=1, profile_dir=None)
  assert "error" not in with_options, with_options.get("error")
  assert with_options["xla_options"] == {"xla_dump_to": str(dump), "xla_dump_hlo_as_text": True}
  assert with_options["global_batch_size"] == len(devices)
  dumped = {p.name for p in dump.iterdir()}
  assert any("train_step" in n or "jit" in n for n in dumped), sorted(dumped)[:5]

  plain = bench_matrix.run_one(config, "plain", 1, {}, steps=1, profile_dir=None)
  assert "error" not in plain and plain["xla_options"] == {}
  assert {p.name for p in dump.iterdir()} == dumped  # nothing more was dumped


def test_unknown_xla_option_is_recorded_as_the_runs_error(devices):
  r = bench_matrix.run_one(smoke_config(), "bogus", 1, {"xla_no_such_option": True},
                           steps=1, profile_dir=None)
  assert "xla_no_such_option" in r["error"]


def test_xla_options_are_refused_for_sampling_runs(devices):
  r = bench_matrix.run_one(smoke_config(), "sample", 1,
                           {"mode": "sample", "xla_gpu_enable_command_buffer": ""},
                           steps=1, profile_dir=None)
  assert "train runs only" in r["error"]


def test_a_peak_no_higher_than_an_earlier_runs_is_only_an_upper_bound():
  first = bench_matrix.own_peak({"peak_memory_bytes": 100}, None)
  assert first["peak_memory_bytes"] == 100
  lower = bench_matrix.own_peak({"peak_memory_bytes": 100}, 100)
  assert lower["peak_memory_bytes"] is None and lower["peak_memory_at_most_bytes"] == 100
  higher = bench_matrix.own_peak({"peak_memory_bytes": 120}, 100)
  assert higher["peak_memory_bytes"] == 120 and "peak_memory_at_most_bytes" not in higher
  assert bench_matrix.own_peak({"peak_memory_bytes": None}, 100)["peak_memory_bytes"] is None
