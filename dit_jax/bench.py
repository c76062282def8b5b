"""Throughput benchmark: the real jitted train step (or 250-step guided sampling) on synthetic data.

  python -m dit_jax.bench --config configs/imagenet.py:variant=XL/2,res=256 \
      --batch_per_device 32 --steps 20 --json /tmp/bench.json
  python -m dit_jax.bench --config configs/imagenet.py:variant=XL/2,res=256 \
      --mode sample --batch_per_device 16 --steps 2
  python -m dit_jax.bench --config configs/digits.py --batch_per_device 16 --config.mesh.data=-1
  python -m dit_jax.bench --config configs/digits.py --mode loop --batch_per_device 128 --steps 200

Train mode times ``train_state.jit_train_step`` (sharded, donated) on one synthetic batch that
lives on the devices, so input pipelines play no part. Compilation (lower + compile) and the
warm-up steps are timed separately and excluded; every timed step blocks on its outputs.
Sample mode times ``dit_jax.diffusion.sample`` with ``DiT.forward_with_cfg`` (the official
batch convention: conditional half + null-label half), first call (compile) excluded.
Loop mode runs train mode and then the real training loop (``dit_jax.train.train`` in a
temporary workdir: the config's data source, prefetch, metrics, non-finite checks, a final
checkpoint) for ``warmup + steps`` steps, timed over the last ``steps`` from the loop's own log
window (synchronized with the devices at both ends), and reports both rates and their ratio.

Reported: images/s, step time (mean, std, min, median, max), TFLOP/s per device, MFU against the
bf16 datasheet peak of the device kind (``dit_jax.flops``; None on CPUs), peak device memory
(``memory_stats()`` where the backend has it), compile time and versions. Train mode also gives
the process CPU seconds per step: on a shared CPU machine that, unlike wall time, barely depends
on other jobs, so CPU regressions stay visible (on accelerators it is the host's overhead). FLOPs follow the
paper: forward Gflops per image = ``dit_gflops`` (multiply-accumulates); a training step is
3 x 2 x that per image, a guided sampling step 2 (halves) x 2 x that per sampled image.

Imports stay light (jax, flax, optax, ml_collections; no tfds/grain/clu/tensorflow) so train
and sample modes run on a bare accelerator machine; loop mode imports the training stack.
"""
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

from absl import app, flags
import flax
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from dit_jax import (config_checks, diffusion, flops, paths, profile_summary, sharding,
                     train_state)
from dit_jax.models import dit

MODES = ("train", "sample", "loop")
PROFILE_STEPS = 3  # train steps traced with --profile, after the timed ones
# Library versions printed with every result (those present in its "versions").
VERSION_KEYS = ("jax", "jaxlib", "flax", "torch", "diffusers", "cuda", "python")


class Timer:
  """Wall-clock seconds since construction (perf_counter)."""

  def __init__(self):
    self._start = time.perf_counter()

  def elapsed(self) -> float:
    return time.perf_counter() - self._start


def model_gflops(config) -> float:
  """Forward Gflops per image in the paper's convention (multiply-accumulates)."""
  return float(flops.dit_gflops(train_state.build_model(config)))


def _batch_struct(config, global_batch: int, batch_sharding=None) -> dict:
  """Shapes of a training batch: x, y and, for text models, context and context_mask."""
  model = train_state.build_model(config)
  shape = (global_batch,) + model.input_shape
  text = jax.eval_shape(lambda: dit.model_kwargs_for_init(model, global_batch))
  return dict(x=jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding),
              y=jax.ShapeDtypeStruct(shape[:1], jnp.int32, sharding=batch_sharding),
              **{k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                 for k, v in text.items()})


def abstract_step_args(config, mesh, abstract_state) -> tuple:
  """(state, batch, rng) as ShapeDtypeStructs with shardings, for ``jitted_step.lower``."""
  batch = _batch_struct(config, config.global_batch_size, sharding.batch_sharding(mesh))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sharding.replicated(mesh))
  return abstract_state, batch, rng


def synthetic_batch(config, mesh, global_batch: int, seed: int = 0) -> dict:
  """A random batch created directly on the devices with the batch sharding."""
  struct = _batch_struct(config, global_batch)
  model = train_state.build_model(config)
  num_classes, vocab = model.num_classes, model.text_vocab_size

  def make(key):
    kx, ky, kc = jax.random.split(key, 3)
    batch = dict(x=jax.random.normal(kx, struct["x"].shape, jnp.float32),
                 y=jax.random.randint(ky, struct["y"].shape, 0, num_classes, jnp.int32))
    if "context" in struct:  # text models: full-length random captions (ids or embeddings)
      context = struct["context"]
      batch.update(context_mask=jnp.ones(struct["context_mask"].shape, bool), context=(
          jax.random.randint(kc, context.shape, 0, vocab, jnp.int32) if vocab
          else jax.random.normal(kc, context.shape, jnp.float32)))
    return batch

  return jax.jit(make, out_shardings=sharding.batch_sharding(mesh))(jax.random.key(seed))


def summarize(times: Sequence[float]) -> dict:
  """Mean, spread and extremes of per-step wall times (seconds)."""
  return dict(mean=statistics.fmean(times), std=statistics.pstdev(times), min=min(times),
              median=statistics.median(times), max=max(times), n=len(times))


def peak_memory_bytes() -> int | None:
  """Largest ``peak_bytes_in_use`` over local devices; None where the backend has no stats."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  (backends without the API raise)
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def versions() -> dict:
  import jaxlib  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
              flax=flax.__version__, optax=optax.__version__, platform=dev.platform,
              device_kind=dev.device_kind, device_count=jax.device_count(),
              process_count=jax.process_count(), xla_flags=os.environ.get("XLA_FLAGS", ""))


@dataclasses.dataclass
class Throughput:
  images_per_s: float
  tflops_per_s_per_device: float
  mfu: float | None


def throughput(images: int, step_s: float, flop_per_image: float) -> Throughput:
  """Images/s, achieved TFLOP/s per device and MFU vs the device kind's bf16 datasheet peak."""
  n = jax.device_count()
  ips = images / step_s
  achieved = flop_per_image * ips / n
  peak = flops.peak_flops_per_device(jax.devices()[0].device_kind)
  return Throughput(ips, achieved / 1e12, None if not peak else achieved / peak)


def _prepare(config, batch_per_device: int):
  """Sets the global batch for this host's devices, validates the config, builds the mesh."""
  if batch_per_device < 1:
    raise ValueError(f"--batch_per_device={batch_per_device}: give at least 1 image per device.")
  config.global_batch_size = batch_per_device * jax.device_count()
  config_checks.validate(config, num_devices=jax.device_count(),
                         process_count=jax.process_count(), check_data=False)
  mesh = sharding.create_mesh(config.mesh)
  return mesh, sharding.rules_from_config(config.get("logical_axis_rules"))


def run_train(config, batch_per_device: int, steps: int, warmup: int = 2,
              profile_dir: str | None = None, compiler_options: dict | None = None) -> dict:
  """Times ``steps`` train steps after compile and ``warmup`` steps; returns the result dict.
  With ``profile_dir``, PROFILE_STEPS more steps are traced there afterwards (not timed) and the
  result's "profile" says which kernels took the device time (``dit_jax.profile_summary``).
  ``compiler_options`` (XLA debug options by name, e.g. {"xla_gpu_enable_command_buffer": ""})
  apply to this step's compile only, so one process can time several XLA flags."""
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0.")
  mesh, _ = _prepare(config, batch_per_device)
  rng = jax.random.key(config.seed)  # the step folds in state.step itself
  _, state_shardings = train_state.abstract_train_state(config, mesh)
  state = train_state.init_train_state(config, mesh, rng)
  step = train_state.jit_train_step(config, mesh, state_shardings)
  batch = synthetic_batch(config, mesh, config.global_batch_size)
  timer = Timer()
  compiled = step.lower(state, batch, rng).compile(compiler_options)
  compile_s = timer.elapsed()
  times = []
  for i in range(warmup + steps):
    if i == warmup:
      cpu_start = time.process_time()
    timer = Timer()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(timer.elapsed())
  cpu_per_step = (time.process_time() - cpu_start) / steps
  extra = {}
  if profile_dir:
    try:
      with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
        for _ in range(PROFILE_STEPS):
          state, metrics = jax.block_until_ready(compiled(state, batch, rng))
      extra["profile"] = profile_summary.summarize_dir(profile_dir)
    except Exception as e:  # pylint: disable=broad-except  (the timing above still stands)
      extra["profile_error"] = f"{type(e).__name__}: {e}"
      print(f"bench: profiling failed, timings kept: {extra['profile_error']}", file=sys.stderr)
  gflops = model_gflops(config)
  stats = summarize(times)
  tp = throughput(config.global_batch_size, stats["mean"], 3 * 2 * gflops * 1e9)
  return _result("train", config, mesh, batch_per_device, steps, warmup, compile_s, stats, tp, gflops,
                 loss=float(metrics["loss"]), process_cpu_s_per_step=cpu_per_step, **extra)


def run_loop(config, batch_per_device: int, steps: int, warmup: int = 2) -> dict:
  """Train mode, then the training loop on the same config; returns the loop's result dict with
  the step's images/s and process CPU s/step next to the loop's (``loop_vs_step`` = ratio)."""
  if warmup < 1:
    raise ValueError(f"--warmup={warmup}: loop mode needs at least 1 (its first log window).")
  step_result = run_train(config, batch_per_device, steps, warmup)
  from dit_jax import train  # pylint: disable=g-import-not-at-top  (grain, clu: loop mode only)
  config.num_train_steps = warmup + steps
  config.log_every_steps = warmup  # the last window is exactly the timed steps
  config.checkpoint_every_steps = config.num_train_steps
  config.sample_every_steps = 0
  config.eval.every_steps = 0
  config.profile_steps = 0
  windows = {}

  def on_log(step, scalars):
    windows[step] = (scalars["perf/steps_per_s"], time.process_time())

  with tempfile.TemporaryDirectory() as workdir:
    timer = Timer()
    train.train(config, workdir, on_log=on_log)
    total_s = timer.elapsed()
  steps_per_s, cpu_end = windows[config.num_train_steps]
  cpu_per_step = (cpu_end - windows[warmup][1]) / steps
  stats = summarize([1 / steps_per_s])  # one window: its mean step time
  gflops = step_result["model_gflops_per_image"]
  tp = throughput(config.global_batch_size, stats["mean"], 3 * 2 * gflops * 1e9)
  mesh = sharding.create_mesh(config.mesh)
  return _result("loop", config, mesh, batch_per_device, steps, warmup, step_result["compile_s"],
                 stats, tp, gflops, loop_total_s=total_s, process_cpu_s_per_step=cpu_per_step,
                 step_images_per_s=step_result["images_per_s"],
                 step_process_cpu_s_per_step=step_result["process_cpu_s_per_step"],
                 loop_vs_step=tp.images_per_s / step_result["images_per_s"])


def run_sample(config, batch_per_device: int, repeats: int, num_steps: int = 250,
               cfg_scale: float = 4.0, sampler: str = "ddpm") -> dict:
  """Times guided sampling of ``batch_per_device`` images per device, ``repeats`` times.

  As the official sample.py: the batch is [noise; same noise] with labels [y; null] and the
  model is ``DiT.forward_with_cfg``, so each step runs the network on twice the images.
  """
  model = train_state.build_model(config)
  if model.context_dim:
    raise ValueError("--mode sample times class-conditional guidance; this is a text model "
                     "(config.model.context_dim > 0): use --mode train or loop.")
  mesh, rules = _prepare(config, batch_per_device)
  n = config.global_batch_size
  rng = jax.random.key(config.seed)
  params = train_state.init_train_state(config, mesh, rng).ema_params
  batch = synthetic_batch(config, mesh, n)
  with sharding.mesh_context(mesh, rules):
    noise = jnp.concatenate([batch["x"], batch["x"]])
    y = jnp.concatenate([batch["y"], jnp.full((n,), model.num_classes, jnp.int32)])

    def model_fn(x, t, y, params, scale):  # one object for every call: compiled once
      return model.apply({"params": params}, x, t, y, scale, method=model.forward_with_cfg)

    def once():
      out = diffusion.sample(config.diffusion, model_fn, noise, rng, sampler=sampler,
                             num_steps=num_steps,
                             model_kwargs=dict(y=y, params=params, scale=jnp.float32(cfg_scale)))
      return jax.block_until_ready(out)

    timer = Timer()
    once()
    first_s = timer.elapsed()
    times = []
    for _ in range(repeats):
      timer = Timer()
      once()
      times.append(timer.elapsed())
  gflops = model_gflops(config)
  stats = summarize(times)
  tp = throughput(n, stats["mean"], num_steps * 2 * 2 * gflops * 1e9)
  # The first call compiles and runs once: its excess over a steady call is the compile time.
  return _result("sample", config, mesh, batch_per_device, repeats, 1, first_s - stats["median"],
                 stats, tp, gflops, sampler=sampler, num_sampling_steps=num_steps,
                 cfg_scale=cfg_scale)


def _result(mode, config, mesh, batch_per_device, steps, warmup, compile_s, stats, tp, gflops,
            **extra) -> dict:
  return dict(
      mode=mode, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=" ".join(["python -m dit_jax.bench"] + sys.argv[1:]),
      model={k: str(v) for k, v in config.model.items()}, mesh=dict(mesh.shape),
      batch_per_device=batch_per_device, global_batch_size=config.global_batch_size,
      timed_steps=steps, warmup_steps=warmup, compile_s=compile_s, step_time_s=stats,
      images_per_s=tp.images_per_s, images_per_s_per_device=tp.images_per_s / jax.device_count(),
      model_gflops_per_image=gflops, tflops_per_s_per_device=tp.tflops_per_s_per_device,
      peak_tflops_per_device=_peak_tflops(), mfu=tp.mfu, peak_memory_bytes=peak_memory_bytes(),
      versions=versions(), **extra)


def _peak_tflops() -> float | None:
  peak = flops.peak_flops_per_device(jax.devices()[0].device_kind)
  return None if not peak else peak / 1e12


def format_result(r: dict) -> str:
  """One human-readable block; "n/a" where the device has no datasheet peak or memory stats."""
  st = r["step_time_s"]
  mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
  mem = r["peak_memory_bytes"]
  mem = "n/a" if mem is None else f"{mem / 1024**3:.2f} GiB"
  v = r["versions"]
  unit = "sampling run" if r["mode"] == "sample" else "step"
  return "\n".join([
      f"{r['mode']}: {v['device_count']} x {v['device_kind']} ({v['platform']}), batch "
      f"{r['batch_per_device']}/device = {r['global_batch_size']}, mesh {r.get('mesh', 'n/a')}",
      f"  images/s {r['images_per_s']:.2f} ({r['images_per_s_per_device']:.2f} per device)",
      f"  {unit} time {1e3 * st['mean']:.2f} ms mean +- {1e3 * st['std']:.2f} (min "
      f"{1e3 * st['min']:.2f}, median {1e3 * st['median']:.2f}, max {1e3 * st['max']:.2f}; "
      f"n={st['n']})",
      f"  TFLOP/s per device {r['tflops_per_s_per_device']:.4g}, MFU {mfu} "
      f"(forward {r['model_gflops_per_image']:.4g} Gflops/image)",
      f"  compile {r['compile_s']:.2f} s, peak device memory {mem}"
      + (f", process CPU {r['process_cpu_s_per_step']:.3f} s/step"
         if "process_cpu_s_per_step" in r else ""),
      *([f"  step mode: images/s {r['step_images_per_s']:.2f}, process CPU "
         f"{r['step_process_cpu_s_per_step']:.3f} s/step; loop/step {r['loop_vs_step']:.3f}"]
        if r["mode"] == "loop" else []),
      *format_profile(r.get("profile", {})),
      "  " + ", ".join(f"{k} {v[k]}" for k in VERSION_KEYS if k in v),
  ])


def format_profile(profile: dict, top: int = 8) -> list[str]:
  """The busiest device line's ``top`` kernels, one line each (share of that line's time)."""
  if not profile:
    return []
  line, busiest = max(profile.items(), key=lambda kv: kv[1]["total_us"])
  return [f"  profile {line}: {busiest['total_us'] / 1e3:.1f} ms over {PROFILE_STEPS} steps"] + [
      f"    {100 * share:5.1f}% {us / 1e3:8.2f} ms x{n:<5d} {name[:90]}"
      for name, us, n, share in busiest["top"][:top]]


def define_flags() -> None:
  """Command-line flags (defined only when run as a program, so other tools can import this)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                  lock_config=False)
  flags.DEFINE_integer("batch_per_device", 8, "Images per device (global = x devices).",
                       lower_bound=1)
  flags.DEFINE_integer("steps", 10, "Timed train steps (train) or sampling runs (sample).",
                       lower_bound=1)
  flags.DEFINE_integer("warmup", 2, "Untimed train steps after compiling (loop mode: >= 1).",
                       lower_bound=0)
  flags.DEFINE_enum("mode", "train", MODES, "What to time.")
  flags.DEFINE_integer("num_sampling_steps", 250, "Sampler steps (sample mode).")
  flags.DEFINE_float("cfg_scale", 4.0, "Guidance scale (sample mode).")
  flags.DEFINE_string("json", None, "Also write the result as JSON to this file.")
  flags.DEFINE_string("profile", None, "Train mode: trace a few more steps into this directory "
                      "(TensorBoard / Perfetto) and report the top kernels by device time.")
  flags.mark_flags_as_required(["config"])


def main(argv: Any) -> None:
  del argv
  f = flags.FLAGS
  if f.json:  # before the run, not after it
    try:
      paths.prepare_output_file(f.json, "--json")
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  if f.mode == "train":
    result = run_train(f.config, f.batch_per_device, f.steps, f.warmup, f.profile)
  elif f.mode == "loop":
    result = run_loop(f.config, f.batch_per_device, f.steps, f.warmup)
  else:
    result = run_sample(f.config, f.batch_per_device, f.steps, f.num_sampling_steps, f.cfg_scale)
  print(format_result(result))
  write_json(result, f.json)


def write_json(result: dict | list, path: str | None) -> None:
  if path:
    with open(path, "w") as fp:
      json.dump(result, fp, indent=2, default=_json_default)


def _json_default(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  return str(x)


if __name__ == "__main__":
  define_flags()
  app.run(main)
