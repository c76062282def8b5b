"""Orbax checkpoints of a training run, and the restores built on them.

Layout: `WORKDIR/checkpoints/<step>/` holds two items,
  - `state`: StandardSave of {step, params, ema_params, opt_state} (global, sharded arrays),
  - `config`: JsonSave of config.to_dict().
The data position is not saved: step s of a run has consumed exactly s global batches, whose
order does not depend on the process count (dit_jax.data.pipeline), so a resumed run rebuilds its
input stream at its step, on any number of hosts.
Saves are asynchronous (training continues while the previous save is written); a save that was
killed midway leaves a `*.orbax-checkpoint-tmp` directory that Orbax ignores, so the latest
*complete* checkpoint is always the one resumed from.

Restores take abstract targets (jax.ShapeDtypeStruct with a sharding), so a checkpoint written
on one mesh or device count is read straight into the shards of another.

Damage (a file cut short, a missing `_METADATA`, garbage config JSON): resume and EMA restores
fall back to the newest intact step with a warning naming the damaged one.
Resume moves damaged steps newer than the one it restores to WORKDIR/damaged_checkpoints/ (never
deleting them), so the run can write those steps again. A checkpoint that is intact but does not
fit the run (model shapes, batch size) is refused by name before any array is read.
"""
import gc
import logging
import os
import signal
from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from dit_jax import sharding
from dit_jax import train_state as ts

CHECKPOINT_SUBDIR = "checkpoints"
STATE_ITEM = "state"
CONFIG_ITEM = "config"
# Checkpoints written before the data position was derived from the step also hold the grain
# iterator's state under this item; its handler stays registered so they are read without warnings.
LEGACY_DATA_ITEM = "data"
DAMAGED_SUBDIR = "damaged_checkpoints"  # beside checkpoints/: damaged steps moved aside on resume
PARAMS = "params"
EMA_PARAMS = "ema_params"
# Replica-parallel saving splits each replicated array among its replicas, one compiled slice per
# piece: a win for large arrays on pods, but ~0.1 s of compilation per small array. Arrays whose
# per-replica piece would be under this size are written whole by their first replica.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20



class CheckpointMismatchError(ValueError):
  """An intact checkpoint that does not fit this run; the message names what differs."""


class DamagedCheckpointError(RuntimeError):
  """No intact checkpoint is left to restore; the message says which are damaged and what to do."""


def _register_array_handler() -> None:
  """Replaces Orbax's jax.Array handler by one with MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL.

  Orbax warns that it overrides the default handler; that is the point, so exactly that warning
  is dropped (the filter is on absl's logger for this call only).
  """
  def overriding(record: logging.LogRecord) -> bool:
    return "overriding" not in record.getMessage()

  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(overriding)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL),
        override=True)
  finally:
    absl_logger.removeFilter(overriding)


_register_array_handler()


def checkpoint_dir(path: str) -> epath.Path:
  """The Orbax directory for `path`: a workdir (-> WORKDIR/checkpoints) or that directory itself.

  A local relative path is made absolute (Orbax's array writer refuses relative ones).
  """
  path = str(path)
  path = epath.Path(path if "://" in path else os.path.abspath(path))
  return path if path.name == CHECKPOINT_SUBDIR else path / CHECKPOINT_SUBDIR


def create_manager(workdir: str, *, max_to_keep: int | None = None, keep_period: int | None = None,
                   for_reading: bool = False) -> ocp.CheckpointManager:
  """An async CheckpointManager on WORKDIR/checkpoints; close() it (or use `with`) when done.

  Args:
    workdir: the run's directory (or its checkpoints/ directory).
    max_to_keep: keep this many most recent checkpoints (None: all).
    keep_period: additionally keep every checkpoint whose step is a multiple of this.
    for_reading: open an existing directory for partial restores (state read as a PyTree, so
      single items such as `ema_params` can be restored without the rest).
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep or None, keep_period=keep_period or None, create=not for_reading,
      enable_async_checkpointing=not for_reading)
  state_handler = ocp.PyTreeCheckpointHandler() if for_reading else ocp.StandardCheckpointHandler()
  handlers = {STATE_ITEM: state_handler, CONFIG_ITEM: ocp.JsonCheckpointHandler(),
              LEGACY_DATA_ITEM: grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def manager_for_config(workdir: str, config) -> ocp.CheckpointManager:
  """The manager a training run uses: keep_checkpoints latest plus every keep_period-th."""
  return create_manager(workdir, max_to_keep=config.get("keep_checkpoints"),
                        keep_period=config.get("keep_period"))


def save(manager: ocp.CheckpointManager, state: ts.TrainState, config, *,
         force: bool = False) -> bool:
  """Starts an async save of state and config at `state.step`.

  Returns whether a save was started. Every process must call it (Orbax coordinates them).
  """
  step = int(jax.device_get(state.step))
  items = {STATE_ITEM: ocp.args.StandardSave(state.to_dict()),
           CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore_state(manager: ocp.CheckpointManager, abstract_state: ts.TrainState,
                  step: int | None = None) -> ts.TrainState:
  """Restores the full state onto the shardings in `abstract_state`.

  Args:
    manager: the run's manager.
    abstract_state: TrainState of ShapeDtypeStruct with shardings (`abstract_train_state`).
    step: which step (default: the latest complete one).
  """
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      **{STATE_ITEM: ocp.args.StandardRestore(abstract_state.to_dict())}))
  return ts.TrainState(**restored[STATE_ITEM])


def _resolve_step(manager: ocp.CheckpointManager, step: int | None, path) -> int:
  available = manager.all_steps()
  if not available:
    raise FileNotFoundError(f"no complete checkpoint in {path}; train first (or check the path).")
  if step is None or step < 0:
    return max(available)
  if step not in available:
    raise FileNotFoundError(f"no checkpoint for step {step} in {path}; available: {sorted(available)}.")
  return step


def restore_config(path: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (latest step by default)."""
  with create_manager(path, for_reading=True) as manager:
    step = _resolve_step(manager, step, checkpoint_dir(path))
    restored = manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
  return ml_collections.ConfigDict(restored[CONFIG_ITEM])


def _check_shapes(path, step, saved_tree, target_tree, what: str,
                  fix: str = "make config.model match the checkpoint's model") -> None:
  """Raises CheckpointMismatchError naming the first leaf whose saved shape differs."""
  saved = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(saved_tree)}
  for key, target in jax.tree_util.tree_leaves_with_path(target_tree):
    name = jax.tree_util.keystr(key)
    if name not in saved:
      raise CheckpointMismatchError(
          f"{what}{name} is missing in the checkpoint {path} (step {step}); the checkpoint was "
          f"written for a different model: {fix}.")
    if tuple(saved[name].shape) != tuple(target.shape):
      raise CheckpointMismatchError(
          f"{what}{name} has shape {tuple(saved[name].shape)} in {path} (step {step}) but the "
          f"model needs {tuple(target.shape)}; {fix}.")


def _state_metadata(manager: ocp.CheckpointManager, step: int):
  """The saved state's tree of array metadata (shapes); raises if it cannot be read."""
  items = manager.item_metadata(step)
  metadata = items[STATE_ITEM] if items is not None else None
  metadata = getattr(metadata, "tree", metadata)
  if metadata is None:
    raise FileNotFoundError(f"{STATE_ITEM}/_METADATA of step {step} is missing or unreadable")
  return metadata


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process (all must fall back together)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _newest_intact(path: epath.Path, steps, read: Callable[[int], Any], what_to_do: str):
  """Tries `read(step)` from the newest step down; returns (step, result, damaged newer steps).

  Any failure but CheckpointMismatchError marks the step damaged (TensorStore reports a file cut
  short as a bare Exception). Raises DamagedCheckpointError when no step can be read.
  """
  damaged = []
  for step in sorted(steps, reverse=True):
    try:
      result, error = read(step), None
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      result, error = None, e
      # Orbax leaves the failed restore's other reads as coroutines; finalize them here, in this
      # thread, rather than at a random later collection in a TensorStore thread (Python 3.11's
      # traceback printing there races with this thread's use of `ast`).
      gc.collect()
    if _on_every_process(error is None):
      return step, result, damaged
    reason = (f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"
              if error is not None else "unreadable on another process")
    logging.warning("Checkpoint %s is damaged (%s); trying the previous step.", path / str(step),
                    reason)
    damaged.append(step)
  raise DamagedCheckpointError(
      f"No intact checkpoint in {path}: step(s) {damaged} could not be read (the warnings above "
      f"say why); nothing was deleted. {what_to_do}")


def restore_params(path: str, abstract: Any, *, step: int | None = None,
                   items: tuple[str, ...] = (PARAMS, EMA_PARAMS)) -> dict:
  """Restores only `items` of a checkpoint's state (no optimizer state is read or built).

  Args:
    path: a workdir or checkpoints/ directory (e.g. a converted official model).
    abstract: ShapeDtypeStruct tree (with shardings) of the parameters, for every item.
    step: checkpoint step (default: the latest).
    items: which parameter trees to read.

  Returns:
    dict item -> parameter tree placed on the target shardings.
  """
  ckpt_dir = checkpoint_dir(path)
  with create_manager(path, for_reading=True) as manager:
    step = _resolve_step(manager, step, ckpt_dir)
    metadata = _state_metadata(manager, step)
    for item in items:
      _check_shapes(ckpt_dir, step, metadata[item], abstract, f"{item}")
    target = {item: abstract for item in items}
    restore = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: restore}))
  return {item: restored[STATE_ITEM][item] for item in items}


def restore_ema_params(workdir: str, step: int | None = None,
                       mesh: jax.sharding.Mesh | None = None):
  """EMA weights for sampling: reads the saved config and `ema_params` only, no optimizer.

  Without `step`, a damaged latest checkpoint is skipped with a warning (left in place) and the
  newest intact one is read.

  Args:
    workdir: a training workdir or converted checkpoint (or its checkpoints/ directory).
    step: checkpoint step (default: the newest intact one).
    mesh: where to place the weights (default: all devices, parameters replicated).

  Returns:
    (config, ema_params).

  Raises:
    FileNotFoundError: no checkpoint (or not that step).
    DamagedCheckpointError: no intact one (or that step is damaged).
  """
  mesh = mesh or sharding.create_mesh({"data": -1})
  path = checkpoint_dir(workdir)
  with create_manager(workdir, for_reading=True) as manager:
    _resolve_step(manager, step, path)  # raises when there is no checkpoint (or no such step)
    steps = [step] if step is not None and step >= 0 else manager.all_steps()

  def read(s):
    config = restore_config(workdir, s)
    abstract = ts.abstract_params(config, mesh)
    return config, restore_params(workdir, abstract, step=s, items=(EMA_PARAMS,))[EMA_PARAMS]

  _, result, _ = _newest_intact(
      path, steps, read, "Sample from another step (--step) or workdir, or train again.")
  return result


def _check_resumable(manager: ocp.CheckpointManager, step: int, config,
                     abstract_state: ts.TrainState) -> None:
  """Refuses (CheckpointMismatchError) a checkpoint this run cannot continue; read errors propagate
  (the step is then treated as damaged)."""
  path = epath.Path(manager.directory)
  saved = manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
  saved_batch = saved[CONFIG_ITEM].get("global_batch_size", config.global_batch_size)
  if saved_batch != config.global_batch_size:
    raise CheckpointMismatchError(
        f"config.global_batch_size={config.global_batch_size} but the checkpoint {path / str(step)} "
        f"was trained with {saved_batch}: its data position counts batches of {saved_batch}, so "
        f"another size would repeat or skip examples. Resume with --config.global_batch_size="
        f"{saved_batch}, or train the new batch size in another --workdir (config.init_from="
        f"{path.parent} starts it from these weights).")
  _check_shapes(path, step, _state_metadata(manager, step)[PARAMS], abstract_state.params,
                PARAMS, fix="resume with the checkpoint's config.model, or train the new model "
                "in another --workdir")


def _move_aside(path: epath.Path, steps) -> epath.Path:
  """Moves damaged step directories to DAMAGED_SUBDIR beside `path` (process 0); returns it."""
  target_dir = path.parent / DAMAGED_SUBDIR
  if jax.process_index() == 0:
    target_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target, n = target_dir / str(step), 0
      while target.exists():
        n += 1
        target = target_dir / f"{step}.{n}"
      (path / str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dit_jax: damaged checkpoints moved aside")
  return target_dir


def restore_latest_intact(manager: ocp.CheckpointManager, config,
                          abstract_state: ts.TrainState) -> ts.TrainState | None:
  """Resumes a run: the newest intact checkpoint's state (None: no checkpoint).

  Each step is first checked against the run (batch size, parameter shapes:
  CheckpointMismatchError). A step that cannot be read is damaged: the previous one is tried, and
  the damaged newer steps are moved to WORKDIR/damaged_checkpoints/ with a warning, so the run
  can save those steps again. DamagedCheckpointError when none is intact.
  """
  steps = manager.all_steps()
  if not steps:
    return None
  path = epath.Path(manager.directory)

  def read(step):
    _check_resumable(manager, step, config, abstract_state)
    return restore_state(manager, abstract_state, step)

  step, state, damaged = _newest_intact(
      path, steps, read,
      f"To start this run from scratch, move {path} away (or pass another --workdir); to keep "
      "its progress, restore the damaged files from a copy.")
  if damaged:
    moved = _move_aside(path, damaged)
    manager.reload()
    logging.warning("Resuming from step %d. The damaged step(s) %s were moved to %s (nothing "
                    "was deleted).", step, damaged, moved)
  return state


def save_params_only(workdir: str, config, params) -> None:
  """Writes step 0 with state = {step, params, ema_params=params} and the config (converter)."""
  state = {"step": 0, PARAMS: params, EMA_PARAMS: params}
  with create_manager(workdir) as manager:
    manager.save(0, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}), force=True)
    manager.wait_until_finished()


def init_from(config, abstract_state: ts.TrainState, state: ts.TrainState) -> ts.TrainState:
  """Replaces params and EMA of a fresh `state` by those of `config.init_from`'s checkpoint.

  Optimizer state and step stay fresh. The position table is not a parameter (it is rebuilt from
  `config.model.input_size`), so a 256 px checkpoint fine-tunes at 512 px with the same params.
  """
  loaded = restore_params(config.init_from, abstract_state.params,
                          step=config.get("init_from_step", -1))
  return state.replace(params=loaded[PARAMS], ema_params=loaded[EMA_PARAMS])


class PreemptionWatcher:
  """Tells the training loop when to save and stop because the job is being preempted.

  Multi-process (TPU pods, jax.distributed): JAX's preemption service catches SIGTERM on any host
  and Orbax's `manager.reached_preemption(step)` turns True at the same step on every host (False
  when the service is disabled). Single process: a SIGTERM handler sets a flag checked after each
  step.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._distributed = jax.process_count() > 1
    self._signalled = False
    self._previous = None
    if not self._distributed:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled = True

  def should_stop(self, step: int) -> bool:
    """Call after every step on every process; True means save now and exit."""
    if self._distributed:
      return self._manager.reached_preemption(step)
    return self._signalled

  def close(self) -> None:
    """Restores the previous SIGTERM handler."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def validate_init_from(config) -> None:
  """Fails early (before compiling) when config.init_from names no checkpoint."""
  if config.get("init_from"):
    with create_manager(config.init_from, for_reading=True) as manager:
      _resolve_step(manager, config.get("init_from_step", -1), checkpoint_dir(config.init_from))

