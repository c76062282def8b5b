"""Trains a DiT: `python -m dit_jax.train --config configs/FILE.py[:ARGS] --workdir DIR`.

Config fields can be overridden on the command line (`--config.num_train_steps=500`,
`--config.mesh.fsdp=-1`). The same command runs on every host of a multi-host job:
`jax.distributed` starts by itself on TPU VMs and SLURM/Open MPI clusters, or from
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; if it cannot start, the run
stops naming what was tried (`--distributed=off` runs each host as a single process instead).

The loop: validate the config (before anything compiles) -> lock the workdir for the run's life
(a second run on it stops at once, naming the owner) -> build the mesh -> resume from
WORKDIR/checkpoints if there is a checkpoint, else initialize (sharded, abstract-first) and
optionally load `config.init_from` -> the input stream from global batch `step` on (so a run
resumes on any number of hosts) -> jitted, donated steps on global batches
assembled from each process's share and put on the devices ahead of use by background threads
(SD-VAE-encoded first for a pixel source with data.vae) -> metrics (fetched only at log steps),
EMA sample grids, sample-quality scores (config.eval: FID, sFID, IS, precision, recall) and
async checkpoints on their schedules. SIGTERM (preemption) saves at the current step and
exits 0; a non-finite loss, gradient or update raises FloatingPointError naming the step (the
bad update is never applied or saved; the host reads each step's flag 3 steps later, so it
never waits on the step it just dispatched).
"""
import collections
import logging
import os
from typing import Callable

# clu's TensorBoard writers import TensorFlow, which only writes event files here; with its oneDNN
# kernels off it also skips the notice it prints on import. A value the user set is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import grain  # noqa: E402  (after the environment is set, as every import below)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dit_jax import checkpoint  # noqa: E402
from dit_jax import compile_cache  # noqa: E402
from dit_jax import config_checks  # noqa: E402
from dit_jax import data  # noqa: E402
from dit_jax import distributed  # noqa: E402
from dit_jax import flops  # noqa: E402
from dit_jax import metrics as metrics_lib  # noqa: E402
from dit_jax import sharding  # noqa: E402
from dit_jax import train_state as ts  # noqa: E402
from dit_jax import workdir_lock  # noqa: E402
from dit_jax.data import sources  # noqa: E402
from dit_jax.evaluation import during_training  # noqa: E402

BATCH_KEYS = ("x", "y", "skipped") + ts.TEXT_KEYS
ENCODER_RNG_STREAM = 1  # fold_in stream of the seed key for on-the-fly VAE posterior noise
_QUIET_LIBRARIES = ("/orbax/", "/grain/")  # their INFO lines drown the training log
# Batches read ahead on the host, and global batches already on the devices, by a background
# thread each (grain.experimental.device_put's two stages), so the step never waits for input.
HOST_PREFETCH = 4
DEVICE_PREFETCH = 2
# Steps dispatched but not yet checked finite: the host runs this far ahead of the device before it
# waits (on the oldest), which bounds both the queued work and how late a bad step is named.
MAX_STEPS_IN_FLIGHT = 3


class _QuietLibraries(logging.Filter):
  """Passes warnings and errors from anywhere, INFO only from outside _QUIET_LIBRARIES."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
        lib in record.pathname for lib in _QUIET_LIBRARIES)


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's rows -> global arrays sharded over (data, fsdp) (rows in process order)."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local_batch[k]))
          for k in BATCH_KEYS if k in local_batch}


def device_batches(dataset: grain.IterDataset, mesh: jax.sharding.Mesh) -> grain.IterDataset:
  """`dataset`'s batches as global arrays (`global_batch`), read and sent to the devices ahead of
  use by background threads, as `grain.experimental.device_put` does for one-process arrays."""
  dataset = grain.experimental.ThreadPrefetchIterDataset(dataset,
                                                         prefetch_buffer_size=HOST_PREFETCH)
  dataset = dataset.map(lambda batch: global_batch(batch, mesh))
  return grain.experimental.ThreadPrefetchIterDataset(dataset,
                                                      prefetch_buffer_size=DEVICE_PREFETCH)


def make_latent_encoder(config, mesh: jax.sharding.Mesh):
  """On-the-fly SD-VAE encoding for a pixel source with `config.data.vae` set, as DiT's
  train.py does without a latent cache: returns `encode(batch, step) -> batch` with `x` replaced
  by a posterior sample x latent_scale, or None when the data are already what the model sees.
  The posterior noise of step s comes from fold_in(key, s), so a resumed run is bit-identical.
  """
  data_cfg = config.data
  if not data_cfg.get("vae") or data_cfg.get("source") == sources.SOURCE_LATENTS:
    return None
  from dit_jax.models import vae  # local: pixel and latent-cache runs need no VAE
  encode = vae.make_encode_fn(data_cfg.vae, latent_scale=data_cfg.get("latent_scale") or None,
                              mesh=mesh)
  key = jax.random.fold_in(jax.random.key(config.seed), ENCODER_RNG_STREAM)
  return lambda batch, step: dict(batch, x=encode(batch["x"], jax.random.fold_in(key, step)))


def check_finite(step: int, metrics: dict) -> None:
  """Raises FloatingPointError if the update at `step` (0-based) had a non-finite loss, gradient
  or result (the step then left the state unchanged: see train_state.make_train_step)."""
  values = jax.device_get({k: metrics[k] for k in ("finite", "loss", "grad_norm")})
  if values["finite"]:
    return
  if not np.isfinite(values["loss"]):
    what = "training loss"
  elif not np.isfinite(values["grad_norm"]):
    what = "gradient"
  else:
    what = "parameter update (loss and gradient were finite)"
  raise FloatingPointError(
      f"Non-finite {what} at step {step} (loss={values['loss']}, grad_norm="
      f"{values['grad_norm']}). The update was not applied and no checkpoint of it was written; "
      "lower config.learning_rate, set config.grad_clip_norm, or check the data.")


class FiniteGuard:
  """Checks every step's `finite` flag (`check_finite`) without stalling the device.

  `push` queues a dispatched step's metrics and checks the step dispatched `max_in_flight` steps
  earlier, which the device has most likely finished, so the host keeps that many steps queued
  ahead of the device and never waits on the step it just dispatched. The lag is a step count,
  not a readiness poll, so every process raises after the same step. `drain` checks all
  pending steps (before a checkpoint is written and at the end): a bad update is named by its
  step and never saved.
  """

  def __init__(self, max_in_flight: int = MAX_STEPS_IN_FLIGHT):
    self.max_in_flight = max_in_flight
    self._pending = collections.deque()

  def push(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))
    if len(self._pending) > self.max_in_flight:
      check_finite(*self._pending.popleft())

  def drain(self) -> None:
    while self._pending:
      check_finite(*self._pending.popleft())


def _initial_state(config, mesh, abstract_state, manager, init_rng):
  """Resumes from the workdir's newest intact checkpoint, else initializes (and loads init_from)."""
  state = checkpoint.restore_latest_intact(manager, config, abstract_state)
  if state is not None:
    logging.info("Resumed from %s step %d.", manager.directory, int(jax.device_get(state.step)))
    return state
  state = ts.init_train_state(config, mesh, init_rng)
  if config.get("init_from"):
    logging.info("Initializing params and EMA from %s.", config.init_from)
    state = checkpoint.init_from(config, abstract_state, state)
  return state


def train(config, workdir: str, devices=None,
          on_log: Callable[[int, dict], None] | None = None) -> ts.TrainState:
  """Runs (or resumes) training to `config.num_train_steps`; returns the final state.

  Args:
    config: the training ConfigDict (see configs/ and docs/training.md).
    workdir: where checkpoints, events and sample grids go; a run resumes from it.
    devices: devices of the mesh (default: all devices of all processes).
    on_log: also called with (step, scalars) at every log step (the loop benchmark reads the
      throughput from it).

  Raises:
    config_checks.ConfigError: the config cannot work (raised before compiling).
    FloatingPointError: a step had a non-finite loss, gradient or update.
    ValueError: `workdir` is empty.
    workdir_lock.WorkdirLockedError: another run is using `workdir` (raised before compiling).
  """
  if not str(workdir).strip():
    raise ValueError("--workdir is empty; name the run's directory (checkpoints and logs go "
                     "there, and a later run with the same --workdir resumes from it).")
  devices = list(devices if devices is not None else jax.devices())
  config_checks.validate(config, num_devices=len(devices), process_count=jax.process_count())
  checkpoint.validate_init_from(config)
  compile_cache.enable(config.get("compilation_cache_dir", ""))
  with workdir_lock.hold(workdir):
    return _train_locked(config, workdir, devices, on_log)


def _train_locked(config, workdir: str, devices: list, on_log) -> ts.TrainState:
  """The body of `train`, run while this run holds the workdir's lock."""
  mesh = sharding.create_mesh(config.mesh.to_dict(), devices)
  logging.info("Mesh %s over %d devices, %d processes.", dict(mesh.shape), mesh.size,
               jax.process_count())
  init_rng, train_rng, sample_rng = jax.random.split(jax.random.key(config.seed), 3)
  abstract_state, state_shardings = ts.abstract_train_state(config, mesh)
  model = ts.build_model(config)
  logging.info("Model: %s parameters, %.4g Gflops per image (forward).",
               f"{sum(p.size for p in jax.tree.leaves(abstract_state.params)):,}",
               flops.dit_gflops(model))
  manager = checkpoint.manager_for_config(workdir, config)
  watcher = checkpoint.PreemptionWatcher(manager)
  data_iterator = None
  try:
    state = _initial_state(config, mesh, abstract_state, manager, init_rng)
    step = int(jax.device_get(state.step))
    if step >= config.num_train_steps:
      logging.warning(
          "The run in %s is already complete: its latest checkpoint is step %d and "
          "config.num_train_steps=%d. Nothing to train; raise --config.num_train_steps to train "
          "further.", workdir, step, config.num_train_steps)
      return state
    data_iterator = iter(device_batches(data.create_dataset(
        config.data, global_batch_size=config.global_batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), start_step=step),
        mesh))
    train_step = ts.jit_train_step(config, mesh, state_shardings)
    encode = make_latent_encoder(config, mesh)
    monitor = metrics_lib.TrainMonitor(config, workdir, model, mesh, step, on_log=on_log)
    evaluator = (during_training.TrainingEvaluator(config, mesh)
                 if during_training.enabled(config) else None)
    if step == 0:
      monitor.write_hparams()
    start_step, guard = step, FiniteGuard()
    while step < config.num_train_steps:
      batch = next(data_iterator)
      if encode is not None:
        batch = encode(batch, step)
      state, step_metrics = train_step(state, batch, train_rng)
      guard.push(step, step_metrics)
      step += 1
      if step == start_step + 1:
        guard.drain()
        monitor.reset_timer(step)  # the first step's time is mostly compilation
      monitor.on_step(step, step_metrics)
      preempted = watcher.should_stop(step)
      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps or preempted:
        guard.drain()
        checkpoint.save(manager, state, config, force=preempted)
      if config.sample_every_steps and step % config.sample_every_steps == 0:
        monitor.write_samples(step, state.ema_params, sample_rng)
      if evaluator is not None and evaluator.due(step):
        monitor.write_eval(step, evaluator(state.ema_params))
      if preempted:
        logging.warning("Preempted: saved step %d; exiting.", step)
        break
    guard.drain()
    manager.wait_until_finished()
    monitor.close()
  finally:
    if data_iterator is not None:
      data_iterator.close()  # stops the prefetch threads
    watcher.close()
    manager.close()
  return state


def define_flags() -> None:
  """Command-line flags (defined only when run as a program, so the loop benchmark can import
  this module next to its own --config)."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py[:ARG].",
                                   lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events, samples.")
  distributed.define_flags()
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize_from_flags()
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
