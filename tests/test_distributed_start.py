"""Checks when the command lines start jax.distributed (`dit_jax.distributed`, used by train,
sample and evaluate) and that a failed start is never swallowed.

jax.distributed.initialize and the TPU/cluster detection are monkeypatched (no TPU, no cluster
here). Reference: the issue's rule: a failed start stops the run with an error naming what was
tried and the opt-out (--distributed=off), which starts nothing.
"""
import jax
import pytest

from dit_jax import distributed


class _Initialize:
  """Stands in for jax.distributed.initialize: records calls, optionally fails."""

  def __init__(self, error=None):
    self.calls, self.error = [], error

  def __call__(self, **kwargs):
    self.calls.append(kwargs)
    if self.error is not None:
      raise self.error


@pytest.fixture
def initialize(monkeypatch):
  def install(error=None, tpu_vm=False, env=None):
    fake = _Initialize(error)
    monkeypatch.setattr(jax.distributed, "initialize", fake)
    monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: tpu_vm)
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES"):
      monkeypatch.delenv(var, raising=False)
    for var, value in (env or {}).items():
      monkeypatch.setenv(var, value)
    return fake
  return install


def test_failed_start_on_a_tpu_vm_is_an_error_naming_what_was_tried(initialize):
  fake = initialize(RuntimeError("metadata server unreachable"), tpu_vm=True)
  with pytest.raises(RuntimeError, match=r"jax.distributed.initialize\(\) failed; tried "
                     r"auto-detection on a TPU VM .*RuntimeError: metadata server unreachable\..*"
                     r"pass --distributed=off to run this host as a single process"):
    distributed.initialize_distributed()
  assert fake.calls == [{}]


def test_failed_manual_and_cluster_starts_name_their_parameters(initialize):
  initialize(ValueError("connection refused"))
  with pytest.raises(RuntimeError, match=r"tried --coordinator_address=10.0.0.1:1234 "
                     r"--num_processes=4 --process_id=2: ValueError: connection refused"):
    distributed.initialize_distributed("10.0.0.1:1234", 4, 2)
  initialize(RuntimeError("no SLURM_PROCID"), env={"SLURM_NTASKS": "4"})
  with pytest.raises(RuntimeError, match=r"tried auto-detection in a multi-host cluster "
                     r"\(SLURM_NTASKS=4\): RuntimeError: no SLURM_PROCID"):
    distributed.initialize_distributed()


def test_off_starts_nothing_even_on_a_tpu_vm(initialize):
  fake = initialize(AssertionError("must not be called"), tpu_vm=True, env={"SLURM_NTASKS": "4"})
  distributed.initialize_distributed(mode="off")
  assert fake.calls == []
  with pytest.raises(ValueError, match="--distributed=off contradicts --coordinator_address"):
    distributed.initialize_distributed("127.0.0.1:1", 2, 0, mode="off")


def test_auto_starts_only_when_there_is_something_to_join(initialize):
  fake = initialize()
  distributed.initialize_distributed()  # a plain machine: one process, nothing started
  assert fake.calls == []
  distributed.initialize_distributed("127.0.0.1:5", 2, 1)
  assert fake.calls == [dict(coordinator_address="127.0.0.1:5", num_processes=2, process_id=1)]
  fake = initialize()
  distributed.initialize_distributed(mode="on")
  assert fake.calls == [{}]
  with pytest.raises(ValueError, match=r"--distributed='maybe'; choose one of"):
    distributed.initialize_distributed(mode="maybe")
