"""Starting jax.distributed for the command lines (train, sample, evaluate): one rule for all.

Every command of a multi-host job runs the same line on every host. ``--distributed=auto``
(the default) starts jax.distributed with ``--coordinator_address``, in a multi-host cluster
(SLURM, Open MPI, multislice, a TPU pod's worker list) or on a TPU VM, where it finds the hosts
itself; ``on`` always starts it; ``off`` never does. A failed start is an error naming what was
tried: a host that silently ran alone would compute without the others.
"""
import glob
import os

import jax
from absl import flags

DISTRIBUTED_MODES = ("auto", "on", "off")  # --distributed
# Environment variables that mean "this is one process of a multi-host job", for which
# jax.distributed.initialize() finds its parameters by itself.
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
_MULTISLICE_VAR = "MEGASCALE_COORDINATOR_ADDRESS"
_TPU_HOSTS_VAR = "TPU_WORKER_HOSTNAMES"  # comma-separated on a pod of several hosts
_TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")


def _on_tpu_vm() -> bool:
  return any(glob.glob(pattern) for pattern in _TPU_DEVICE_GLOBS)


def _in_multihost_cluster() -> bool:
  sizes = (int(os.environ.get(v) or 1) for v in _CLUSTER_SIZE_VARS)
  return (any(n > 1 for n in sizes) or bool(os.environ.get(_MULTISLICE_VAR))
          or "," in os.environ.get(_TPU_HOSTS_VAR, ""))


def _distributed_start(coordinator_address, num_processes, process_id, mode: str) -> str | None:
  """Why jax.distributed is to be started, as words for an error message (None: it is not)."""
  if coordinator_address:
    return (f"--coordinator_address={coordinator_address} --num_processes={num_processes} "
            f"--process_id={process_id}")
  if _in_multihost_cluster():
    found = [f"{v}={os.environ[v]}" for v in _CLUSTER_SIZE_VARS + (_MULTISLICE_VAR, _TPU_HOSTS_VAR)
             if os.environ.get(v)]
    return f"auto-detection in a multi-host cluster ({', '.join(found)})"
  if _on_tpu_vm():
    return "auto-detection on a TPU VM (it has TPU devices)"
  if mode == "on":
    return "auto-detection (--distributed=on)"
  return None


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           mode: str = "auto") -> None:
  """Starts jax.distributed when this is one process of several (explicitly or detected).

  Args:
    coordinator_address, num_processes, process_id: a manual start (HOST:PORT of process 0).
    mode: "auto" starts it with a coordinator address, in a multi-host cluster (SLURM, Open MPI,
      multislice, a TPU pod's worker list) or on a TPU VM, where jax.distributed finds the hosts
      itself; "on" always starts it; "off" never does (each process trains alone).

  Raises:
    RuntimeError: the start failed (naming what was tried and the opt-out): a host that silently
      ran alone would train its own model, without the others or preemption handling.
    ValueError: an unknown mode, or "off" with a coordinator address.
  """
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f"--distributed={mode!r}; choose one of {DISTRIBUTED_MODES}.")
  if mode == "off":
    if coordinator_address:
      raise ValueError(f"--distributed=off contradicts --coordinator_address={coordinator_address}; "
                       "drop one of them.")
    return
  tried = _distributed_start(coordinator_address, num_processes, process_id, mode)
  if tried is None:
    return
  kwargs = (dict(coordinator_address=coordinator_address, num_processes=num_processes,
                 process_id=process_id) if coordinator_address else {})
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  (re-raised with what was tried)
    raise RuntimeError(
        f"jax.distributed.initialize() failed; tried {tried}: {type(e).__name__}: {e}. Fix the "
        "job's setup (every host runs the same command; process 0 must be reachable), or pass "
        "--distributed=off to run this host as a single process.") from e


def define_flags() -> None:
  """--coordinator_address, --num_processes, --process_id and --distributed."""
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0, for manual multi-process starts.")
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
  flags.DEFINE_enum("distributed", "auto", list(DISTRIBUTED_MODES),
                    "Start jax.distributed: auto (with --coordinator_address, in a multi-host "
                    "cluster or on a TPU VM), on (always; auto-detected if no coordinator is "
                    "given) or off (never: a single process). A failed start is an error unless "
                    "off.")


def initialize_from_flags() -> None:
  """``initialize_distributed`` with the values of the flags ``define_flags`` defined."""
  f = flags.FLAGS
  initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
