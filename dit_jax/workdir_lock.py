"""One training run per workdir: an exclusive lock on WORKDIR/run.lock for the run's life.

Two runs writing the same workdir delete each other's checkpoints (each manager's retention
policy removes the other's steps) and interleave their TensorBoard curves, so the second one
must stop at once. The lock is `fcntl.flock` on a local lock file: the kernel releases it when
the owner exits, however it exits (SIGKILL included), so a crashed run never blocks its restart.
The file records the owner (host, pid, start time); a record left by a run that died without
releasing it is taken over with a warning.

The lock belongs to the run, not to one process: on a multi-process job process 0 takes it and
tells the others the outcome, so every process of a second run stops with the same error.
Cloud-storage workdirs (gs://...) have no file locks; no lock is taken there (a warning says so).
"""
import contextlib
import datetime
import fcntl
import logging
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir; the message names the workdir and that run's owner."""


def _owner() -> str:
  started = datetime.datetime.now().isoformat(timespec="seconds")
  return f"host {socket.gethostname()}, pid {os.getpid()}, started {started}"


def _read(fd: int) -> str:
  return os.pread(fd, 4096, 0).decode(errors="replace").strip()


def acquire(workdir: str) -> int | None:
  """Locks `workdir` for this process; returns the lock's file descriptor (None: not lockable).

  Raises:
    WorkdirLockedError: another live process holds the lock.
  """
  if "://" in workdir:
    logging.warning("%s is not a local path: no workdir lock is taken (object stores have no "
                    "file locks). Make sure no other run writes this workdir.", workdir)
    return None
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    owner = _read(fd) or "owner not recorded yet"
    os.close(fd)
    raise WorkdirLockedError(
        f"The workdir {workdir} is in use by another training run ({owner}; lock file {path}). "
        "Wait for that run to finish, stop it, or pass another --workdir.") from None
  except OSError as e:  # e.g. a network filesystem without flock support
    os.close(fd)
    logging.warning("Could not lock %s (%s); continuing without a workdir lock. Make sure no "
                    "other run writes this workdir.", path, e)
    return None
  previous = _read(fd)
  if previous:
    logging.warning("Taking over the workdir lock %s from a run that ended without releasing it "
                    "(%s); it is no longer running.", path, previous)
  os.ftruncate(fd, 0)
  os.pwrite(fd, (_owner() + "\n").encode(), 0)
  return fd


def release(fd: int | None) -> None:
  """Clears the owner record and releases the lock (closing the file releases the flock)."""
  if fd is not None:
    os.ftruncate(fd, 0)
    os.close(fd)


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir`'s lock for the body of the `with` (process 0 of a multi-process run).

  Every process must enter it; if the workdir is taken, every process raises WorkdirLockedError.
  """
  fd, error = None, None
  if jax.process_index() == 0:
    try:
      fd = acquire(workdir)
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not locked and error is None:
      error = WorkdirLockedError(
          f"The workdir {workdir} is in use by another training run (process 0's error names "
          "its owner); pass another --workdir.")
  if error is not None:
    raise error
  try:
    yield
  finally:
    release(fd)
