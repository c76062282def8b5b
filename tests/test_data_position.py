"""Checks that the input stream can start at any global batch, which is how a run resumes.

Reference: one process's stream read from the start. For P processes started at `start_step`
s, the rows of their first batches, concatenated in process order, are global batches s, s+1,
... of that stream, with and without worker processes (data.num_workers): the data position is
the step, whatever the host count or worker count before and after a restart.
"""
import numpy as np
import pytest

from dit_jax import data

CFG = dict(source="digits", flip=True)
BATCH = 24
SEED = 5
START = 7
COUNT = 3


def _stream(process_index=0, process_count=1, start_step=0, **cfg):
  return iter(data.create_dataset(dict(CFG, **cfg), global_batch_size=BATCH, seed=SEED,
                                  process_index=process_index, process_count=process_count,
                                  start_step=start_step))


@pytest.fixture(scope="module")
def reference():
  stream = _stream()
  return [next(stream) for _ in range(START + COUNT)][START:]


@pytest.mark.parametrize("process_count, num_workers", [(1, 0), (2, 0), (4, 0), (2, 2)])
def test_stream_from_a_step_is_the_global_order(reference, process_count, num_workers):
  streams = [_stream(p, process_count, START, num_workers=num_workers)
             for p in range(process_count)]
  for want in reference:
    parts = [next(s) for s in streams]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), want[key])
  for s in streams:
    s.close()


def test_negative_start_step_is_refused():
  with pytest.raises(ValueError, match="start_step=-1 is negative"):
    _stream(start_step=-1)
