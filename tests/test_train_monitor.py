"""What training writes to TensorBoard: `data/skipped`, the EMA sample grid, hparams.

- A few steps on an image folder with corrupt files (dit_jax.data.testing): the events must hold
`data/skipped` at every log step, equal to the sum of `batch["skipped"]` over the window's
batches as the data pipeline itself yields them (read here independently, with the run's seed),
and above zero, since the folder holds corrupt files.
- image_grid puts sample i at row i // 8, column i % 8 (checked cell by cell, black cells
  after the last sample); flatten_config names nested scalars "a.b" and leaves out the rest.
"""
import jax
import ml_collections
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from configs import digits
from dit_jax import data, metrics, train
from dit_jax.data import testing

STEPS, LOG_EVERY = 4, 2


def _scalars(workdir: str, tag: str) -> dict[int, float]:
  events = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}


def test_corrupt_images_are_logged_as_data_skipped(tmp_path):
  folder = testing.make_image_folder(str(tmp_path / "images"), per_class=3, corrupt=2)
  config = digits.get_config("smoke")
  config.model.in_channels = 3
  config.data.update(source="imagefolder", data_dir=folder, split="", image_size=8, flip=False)
  config.update(num_train_steps=STEPS, log_every_steps=LOG_EVERY, checkpoint_every_steps=STEPS,
                global_batch_size=8)
  workdir = str(tmp_path / "run")
  train.train(config, workdir, devices=jax.devices()[:1])

  batches = iter(data.create_dataset(config.data, global_batch_size=8, seed=config.seed,
                                     process_index=0, process_count=1))
  per_step = [int(np.sum(next(batches)["skipped"])) for _ in range(STEPS)]
  want = {s: float(sum(per_step[s - LOG_EVERY:s])) for s in range(LOG_EVERY, STEPS + 1, LOG_EVERY)}
  assert sum(per_step) > 0
  assert _scalars(workdir, "data/skipped") == want


def test_image_grid_cells():
  images = np.random.default_rng(0).uniform(-1, 1, (11, 3, 2, 1))
  grid = metrics.image_grid(images, columns=4)
  assert grid.shape == (9, 8, 1) and grid.dtype == np.uint8
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255)
  for i in range(12):
    r, k = divmod(i, 4)
    cell = grid[3 * r:3 * r + 3, 2 * k:2 * k + 2]
    np.testing.assert_array_equal(cell, pixels[i] if i < 11 else 0)


def test_flatten_config_keeps_nested_scalars():
  config = ml_collections.ConfigDict(dict(
      lr=0.1, name="x", flag=True, model=dict(depth=2, inner=dict(dtype="float32")),
      rules=(("embed", "fsdp"),), empty={}))
  assert metrics.flatten_config(config) == {
      "lr": 0.1, "name": "x", "flag": True, "model.depth": 2, "model.inner.dtype": "float32"}
