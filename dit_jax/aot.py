"""Ahead-of-time compile of the real train step for a TPU topology you do not have.

Answers "does this config compile and fit on that pod slice, and how fast might it be?" before
paying for the slice, on any machine with libtpu installed (the ``tpu`` extra):

  python -m dit_jax.aot --config configs/imagenet.py:variant=XL/2,res=256 --topology v5p:4x4x4
  python -m dit_jax.aot --config configs/imagenet.py:variant=XL/2,res=256 --topology v5e:4x4 \
      --config.global_batch_size=512 --config.mesh.fsdp=-1 --config.mesh.data=1
  python -m dit_jax.aot --config ... --topology v5p:2x2x2 --num_slices 2 --config.mesh.dcn_data=2

It builds the mesh of ``config.mesh`` over the topology's compile-only devices, lowers the jitted,
donated, sharded train step (``dit_jax.train_state.jit_train_step``) with ``ShapeDtypeStruct``
arguments carrying their shardings, compiles it with libtpu, and reports per chip: memory
(arguments, temporaries, outputs, generated code) against the chip's HBM, whether it fits, and
the compiler's cost-model step time with the images/s and MFU it implies. Those last three are
COMPILER ESTIMATES (XLA's roofline cost model), not measurements.
"""
import dataclasses
import os
from typing import Any

from absl import app, flags
import jax
from ml_collections import config_flags

from dit_jax import bench, config_checks, flops, sharding, train_state

# Topology name prefix (as in `gcloud ... --accelerator-type` families) -> libtpu chip config.
# v4 chips have two TensorCores; "megacore" presents each chip as one device, as Cloud TPU does.
CHIP_CONFIGS = {"v4": "megacore", "v5e": "default", "v5p": "default", "v6e": "default"}

GIB = 1024**3
# Per JAX device (= per chip for the families above): HBM in GiB and HBM bandwidth in bytes/s,
# from the Cloud TPU system architecture pages (cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}):
# v4 "32 GiB, 1200 GBps"; v5e "16 GB, 819 GBps"; v5p "95 GB, 2765 GBps"; v6e "32 GB, 1638 GBps".
# Keys are the `device_kind` strings of compile-only devices.
CHIP_MEMORY = {
    "TPU v4": (32, 1200e9),
    "TPU v5 lite": (16, 819e9),
    "TPU v5": (95, 2765e9),
    "TPU v5p": (95, 2765e9),
    "TPU v6 lite": (32, 1638e9),
}
ESTIMATE_LABEL = "compiler estimate (XLA cost model), not a measurement"
UNDERCOUNT_FRACTION = 0.5
# XLA's TPU cost model returns a negative optimal_seconds when it cannot cost some ops (seen with
# the async all-gathers of FSDP); then the estimate falls back to this per-chip roofline.
ROOFLINE_LABEL = ("roofline lower bound max(compiler flops / peak, compiler bytes accessed / HBM "
                  "bandwidth), communication not counted; not a measurement")


@dataclasses.dataclass
class AotReport:
  """What one ahead-of-time compile tells about a config on a topology (memory per chip)."""
  topology: str
  num_slices: int
  num_chips: int
  device_kind: str
  mesh: dict
  global_batch_size: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  generated_code_bytes: int
  total_bytes: int
  hbm_bytes: int | None
  fits: bool | None
  compile_s: float
  compiler_flops_per_chip: float | None
  compiler_bytes_accessed_per_chip: float | None
  compiler_optimal_seconds: float | None
  estimated_step_s: float | None
  estimated_images_per_s_per_chip: float | None
  estimated_mfu: float | None
  model_gflops_per_image: float
  estimate_note: str


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only TPU devices of ``topology`` (e.g. "v5p:4x4x4") times ``num_slices``.

  Raises ValueError naming the supported families, or libtpu's reason for a bad shape.
  """
  family, sep, shape = topology.partition(":")
  if not sep or family not in CHIP_CONFIGS or not shape:
    raise ValueError(
        f"Unknown TPU topology {topology!r}. Use FAMILY:SHAPE with FAMILY one of "
        f"{sorted(CHIP_CONFIGS)} and SHAPE chips per dimension, e.g. v5e:2x2, v5e:16x16, "
        "v4:2x2x1, v5p:4x4x4, v6e:8x8.")
  if num_slices < 1:
    raise ValueError(f"--num_slices must be >= 1, got {num_slices}.")
  # Compile-only use: another JAX process on this machine may hold libtpu's lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology, chip_config_name=CHIP_CONFIGS[family],
        num_slices=num_slices)
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f"libtpu rejected topology {topology!r} (num_slices={num_slices}): {e}. "
                     "Check the shape is one Cloud TPU offers for that family.") from e
  return list(desc.devices)


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per partition program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def compile_for_topology(config, topology: str, num_slices: int = 1) -> AotReport:
  """Lowers and compiles ``config``'s train step for ``topology``; see the module docstring.

  Raises ValueError (config_checks.ConfigError) before compiling when the config cannot be
  sharded there: mesh sizes that do not multiply to the chip count, a global batch that the
  batch shards (or hosts) do not divide.
  """
  devices = topology_devices(topology, num_slices)
  hosts = len({d.process_index for d in devices})
  config_checks.validate(config, num_devices=len(devices), process_count=hosts, check_data=False)
  try:
    mesh = sharding.create_mesh(config.mesh, devices)
  except ValueError as e:
    raise ValueError(f"config.mesh cannot be laid out on {topology} x {num_slices} slice(s) "
                     f"({len(devices)} chips): {e}") from e
  abstract_state, state_shardings = train_state.abstract_train_state(config, mesh)
  step = train_state.jit_train_step(config, mesh, state_shardings)
  args = bench.abstract_step_args(config, mesh, abstract_state)
  timer = bench.Timer()
  compiled = step.lower(*args).compile()
  return _report(config, topology, num_slices, mesh, compiled, timer.elapsed())


def _estimate_step_s(cost: dict, kind: str, model_flops: float,
                     scanned: bool) -> tuple[float | None, str]:
  """(step seconds, how it was estimated) from the compiler's per-chip cost analysis.

  XLA's cost analysis counts a loop body once, so with ``scanned`` blocks (nn.scan), or a count
  far below ``model_flops`` (the paper-convention FLOPs per chip and step), it is unusable.
  """
  if scanned or cost.get("flops", 0.0) < UNDERCOUNT_FRACTION * model_flops:
    return None, ("no estimate: XLA's cost analysis counts loop bodies once (scan_blocks=True) "
                  "or counted fewer FLOPs than the model has; compile unrolled for estimates")
  optimal = cost.get("optimal_seconds")
  if optimal is not None and optimal > 0:
    return float(optimal), ESTIMATE_LABEL
  peak = flops.peak_flops_per_device(kind)
  bandwidth = CHIP_MEMORY.get(kind, (None, None))[1]
  if not (peak and bandwidth and cost.get("flops")):
    return None, "no estimate: the compiler gave none and the chip's peaks are unknown"
  return max(cost["flops"] / peak, cost.get("bytes accessed", 0.0) / bandwidth), ROOFLINE_LABEL


def _report(config, topology, num_slices, mesh, compiled, compile_s) -> AotReport:
  mem = compiled.memory_analysis()
  kind = mesh.devices.flat[0].device_kind
  chips = mesh.devices.size
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  hbm = CHIP_MEMORY.get(kind, (None, None))[0]
  hbm_bytes = None if hbm is None else hbm * GIB
  cost = _cost(compiled)
  gflops = bench.model_gflops(config)
  step_s, note = _estimate_step_s(cost, kind, 6 * gflops * 1e9 * config.global_batch_size / chips,
                                  bool(config.model.get("scan_blocks", False)))
  images_per_chip = None if step_s is None else config.global_batch_size / step_s / chips
  mfu = None
  if images_per_chip is not None:
    mfu = flops.mfu(images_per_chip * chips, gflops, chips, kind)
  return AotReport(
      topology=topology, num_slices=num_slices, num_chips=chips, device_kind=kind,
      mesh=dict(mesh.shape), global_batch_size=config.global_batch_size,
      argument_bytes=mem.argument_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
      output_bytes=mem.output_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
      generated_code_bytes=mem.generated_code_size_in_bytes, total_bytes=total,
      hbm_bytes=hbm_bytes, fits=None if hbm_bytes is None else total <= hbm_bytes,
      compile_s=compile_s, compiler_flops_per_chip=cost.get("flops"),
      compiler_bytes_accessed_per_chip=cost.get("bytes accessed"),
      compiler_optimal_seconds=cost.get("optimal_seconds"), estimated_step_s=step_s,
      estimated_images_per_s_per_chip=images_per_chip, estimated_mfu=mfu,
      model_gflops_per_image=gflops, estimate_note=note)


def format_report(r: AotReport) -> str:
  """Human-readable summary; estimates are labeled as such."""
  gib = lambda b: f"{b / GIB:9.3f} GiB"
  hbm = "unknown" if r.hbm_bytes is None else gib(r.hbm_bytes).strip()
  lines = [
      f"topology {r.topology} x {r.num_slices} slice(s): {r.num_chips} chips of {r.device_kind}, "
      f"mesh {r.mesh}, global batch {r.global_batch_size}, compiled in {r.compile_s:.1f} s",
      "memory per chip:",
      f"  arguments        {gib(r.argument_bytes)}",
      f"  temporaries      {gib(r.temp_bytes)}",
      f"  outputs          {gib(r.output_bytes)}  (aliased to donated arguments: "
      f"{r.alias_bytes / GIB:.3f} GiB)",
      f"  generated code   {gib(r.generated_code_bytes)}",
      f"  total            {gib(r.total_bytes)}  of HBM {hbm} -> "
      f"{ {True: 'FITS', False: 'DOES NOT FIT', None: 'unknown'}[r.fits] }",
      f"{r.estimate_note}:",
  ]
  if r.compiler_flops_per_chip:
    model = 6 * r.model_gflops_per_image * 1e9 * r.global_batch_size / r.num_chips
    lines.append(f"  compiler FLOPs per chip per step {r.compiler_flops_per_chip / 1e12:.3f} T "
                 f"(model, paper convention: {model / 1e12:.3f} T)")
  if r.estimated_step_s is None:
    lines.append("  no step time estimate")
  else:
    mfu = "n/a" if r.estimated_mfu is None else f"{100 * r.estimated_mfu:.1f}%"
    lines += [
        f"  step time        {1e3 * r.estimated_step_s:10.2f} ms",
        f"  images/s/chip    {r.estimated_images_per_s_per_chip:10.1f}",
        f"  MFU              {mfu:>10}  (3 x 2 x {r.model_gflops_per_image:.4g} forward Gflops "
        "per image vs the bf16 datasheet peak)",
    ]
  return "\n".join(lines)


def define_flags() -> None:
  """Command-line flags (defined only when run as a program)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                  lock_config=False)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x4 or v5e:4x4.")
  flags.DEFINE_integer("num_slices", 1, "Slices of that topology (multislice over DCN).")
  flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
  flags.mark_flags_as_required(["config", "topology"])


def main(argv: Any) -> None:
  del argv
  f = flags.FLAGS
  report = compile_for_topology(f.config, f.topology, f.num_slices)
  print(format_report(report))
  bench.write_json(dataclasses.asdict(report), f.json)


if __name__ == "__main__":
  define_flags()
  app.run(main)
