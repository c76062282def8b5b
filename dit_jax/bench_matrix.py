"""Several benchmark runs in one process: the GPU lever matrix of docs/benchmarks.md.

  python -m dit_jax.bench_matrix --config configs/imagenet.py:variant=XL/2,res=256 \
      --json matrix.json --profile /tmp/profile \
      --run default:256 --run adam_mu_bf16:256:adam_mu_dtype=bfloat16 \
      --run remat:256:model.remat_policy=qkv_attention_mlp_saveable --run sample:32:mode=sample \
      --run no_cuda_graphs:256:xla_gpu_enable_command_buffer=

Each ``--run NAME:BATCH[:KEY=VALUE,...]`` is one ``dit_jax.bench`` run (train mode unless
``mode=sample``) on a fresh copy of the config with the overrides applied (dotted keys as on the
command line; values parsed as Python literals, else kept as strings). Keys that start with
``xla_`` are XLA debug options for that run's train-step compile (``jax.stages.Lowered.compile``'s
``compiler_options``; the same names as XLA_FLAGS, which a process reads only once). Runs go one
after the other in this process, which pays the imports once and, on a machine with minutes of
device time, leaves only compiles and timed steps. After every run the whole list so far is
written to ``--json`` (a crash or a timeout keeps what finished) and one summary line is printed.
A run that fails (out of memory at a large batch, say) is recorded with its error and the next
one starts.
``--profile DIR`` traces the first train run (``bench.run_train(profile_dir=...)``).

Peak memory: the devices' ``peak_bytes_in_use`` counts from the process start and jax cannot
reset it, so a run whose reading does not exceed an earlier run's has no peak of its own: its
``peak_memory_bytes`` is None and ``peak_memory_at_most_bytes`` keeps the reading (on the H200,
2026-11-27, a remat run after the default read the default's 98.8 GiB).
"""
import ast
import copy
import sys
import traceback
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from dit_jax import bench, paths


def parse_run(spec: str) -> tuple[str, int, dict]:
  """"NAME:BATCH[:K=V,K=V]" -> (name, batch per device, {dotted key: value})."""
  parts = spec.split(":", 2)
  if len(parts) < 2 or not parts[0] or not parts[1].isdigit() or int(parts[1]) < 1:
    raise ValueError(f"--run={spec!r}: give NAME:BATCH_PER_DEVICE[:KEY=VALUE,...], e.g. "
                     "adam_mu_bf16:256:adam_mu_dtype=bfloat16")
  overrides = {}
  for item in filter(None, (parts[2] if len(parts) == 3 else "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--run={spec!r}: override {item!r} is not KEY=VALUE.")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return parts[0], int(parts[1]), overrides


def run_one(base_config, name: str, batch: int, overrides: dict, steps: int,
            profile_dir: str | None) -> dict:
  """One bench run of ``base_config`` with ``overrides``; returns its result or its error."""
  overrides = dict(overrides)
  mode = overrides.pop("mode", "train")
  xla_options = {k: overrides.pop(k) for k in list(overrides) if k.startswith("xla_")}
  config = copy.deepcopy(base_config)
  try:
    if xla_options and mode != "train":
      raise ValueError(f"XLA options {sorted(xla_options)} apply to train runs only.")
    config.update_from_flattened_dict(overrides)
    if mode == "sample":
      result = bench.run_sample(config, batch, repeats=1)
    else:
      result = bench.run_train(config, batch, steps, profile_dir=profile_dir,
                               compiler_options=xla_options or None)
  except Exception as e:  # pylint: disable=broad-except  (recorded; the next run goes on)
    traceback.print_exc()
    return dict(name=name, batch_per_device=batch, overrides=overrides, mode=mode,
                xla_options=xla_options, error=f"{type(e).__name__}: {str(e)[:2000]}")
  return dict(result, name=name, overrides=overrides, xla_options=xla_options)


def own_peak(result: dict, process_peak: int | None) -> dict:
  """``result`` with its peak memory moved to ``peak_memory_at_most_bytes`` when it does not
  exceed ``process_peak`` (the devices' reading before this run: the earlier runs' largest,
  failed runs included)."""
  peak = result.get("peak_memory_bytes")
  if peak is None or process_peak is None or peak > process_peak:
    return result
  return dict(result, peak_memory_bytes=None, peak_memory_at_most_bytes=peak)


def summary_line(r: dict) -> str:
  if "error" in r:
    return f"[{r['name']}] batch {r['batch_per_device']}: FAILED {r['error'][:200]}"
  mem, at_most = r["peak_memory_bytes"], r.get("peak_memory_at_most_bytes")
  peak = (f"{mem / 1024**3:.1f} GiB" if mem is not None else
          f"<= {at_most / 1024**3:.1f} GiB (an earlier run's)" if at_most is not None else "n/a")
  mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
  return (f"[{r['name']}] {r['mode']} batch {r['batch_per_device']}: "
          f"{r['images_per_s_per_device']:.1f} images/s/device, MFU {mfu}, step "
          f"{1e3 * r['step_time_s']['mean']:.1f} ms, compile {r['compile_s']:.0f} s, peak {peak}")


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                  lock_config=False)
  flags.DEFINE_multi_string("run", None, "NAME:BATCH_PER_DEVICE[:KEY=VALUE,...]; repeatable.")
  flags.DEFINE_integer("steps", 10, "Timed train steps per run.", lower_bound=1)
  flags.DEFINE_string("json", None, "All results so far, rewritten after every run.")
  flags.DEFINE_string("profile", None, "Trace the first train run here (see bench --profile).")
  flags.mark_flags_as_required(["config", "run", "json"])


def main(argv: Any) -> None:
  del argv
  f = flags.FLAGS
  try:
    runs = [parse_run(spec) for spec in f.run]
    paths.prepare_output_file(f.json, "--json")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  results, profile_dir = [], f.profile
  for name, batch, overrides in runs:
    profiled = profile_dir if overrides.get("mode", "train") == "train" else None
    peak_before = bench.peak_memory_bytes()
    result = run_one(f.config, name, batch, overrides, f.steps, profiled)
    if profiled and "error" not in result:
      profile_dir = None  # only the first train run that worked is traced
    if "error" not in result:
      result = own_peak(result, peak_before)
    results.append(result)
    print(summary_line(result), flush=True)
    for line in bench.format_profile(result.get("profile", {}), top=15):
      print(line, flush=True)
    bench.write_json(results, f.json)
  sys.exit(1 if all("error" in r for r in results) else 0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
