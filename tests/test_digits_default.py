"""The digits default learns: briefly trained, its samples beat an untrained model's.

The judge is independent of the model: `dit_jax.quality`'s digit classifier, trained on the real
digits (held-out accuracy >= 0.97, tests/test_quality.py). An untrained DiT (adaLN-Zero: it
predicts eps = 0 everywhere) samples blobs that the classifier assigns at chance (~0.1) with a
large Fréchet distance; the default recipe, trained for a fraction of its schedule, must do
clearly better on both, so the test fails if training, the checkpoint's EMA or sampling breaks.
Both models are sampled with classifier-free guidance 4 (the paper's scale): a brief run knows
the class before it draws it reliably, and guidance brings that out (measured at 500 steps of
128: accuracy 0.21 / 0.43 / 0.66 at guidance 1 / 2 / 4), while the untrained model's eps = 0 is
unchanged by guidance. The run is 700 steps of 64 (measured 2026-11-27: accuracy 0.78, Fréchet
distance 45 against the untrained 0.11 and 131; 114 s on the 2-core machine): on that CPU a step
of 128 costs as much as one of 256 (docs/benchmarks.md, "Batch size and the CPU compiler") and
twice one of 64, and fewer steps fail (500 of 64: 0.29; 300 of 128 or 250 of 256: 0.17, 0.11).
The run also has to log the periodic quality evaluation (eval/accuracy, eval/fd, ...) that the
training job writes to TensorBoard with each sample grid.
"""
import jax
import numpy as np
import pytest

import brief_training  # tests/ is on sys.path
from configs import digits
from dit_jax import metrics, quality, sample, sharding, sweep, train
from dit_jax import train_state as ts

BRIEF_STEPS = 700
BATCH = 64
NUM_SAMPLES = 100
SAMPLING = dict(sampler="ddim", num_steps=50, cfg_scale=4.0)


@pytest.mark.slow
def test_briefly_trained_default_beats_an_untrained_model(tmp_path):
  # The default's grid steps; a longer warmup than the video/text tests.
  config = brief_training.brief_config(digits.get_config(), BRIEF_STEPS, batch_size=BATCH,
                                       warmup_steps=50, log_windows=4)
  one_device = jax.devices()[:1]  # the default's mesh fills whatever devices it is given
  train.train(config, str(tmp_path), devices=one_device)

  scalars = sweep.read_scalars(str(tmp_path))
  for name in metrics.EVAL_SCALARS["digits"]:
    assert [step for step, _ in scalars[f"eval/{name}"]] == [BRIEF_STEPS], name
  assert (tmp_path / "samples" / f"step_{BRIEF_STEPS:08d}.png").exists()

  labels = np.tile(np.arange(10), NUM_SAMPLES // 10)
  trained = sample.sample_to_files(str(tmp_path), num_samples=NUM_SAMPLES, labels=list(labels),
                                   evaluate=True, **SAMPLING)
  mesh = sharding.create_mesh({"data": -1}, one_device)
  untrained_params = ts.init_train_state(config, mesh, jax.random.key(0)).ema_params
  images = sample.generate_images(config, untrained_params, labels, mesh=mesh, **SAMPLING)
  untrained = quality.digits_quality(images, labels)

  assert untrained["accuracy"] < 0.25, untrained
  assert trained["accuracy"] >= untrained["accuracy"] + 0.2, (trained, untrained)
  assert trained["fd"] < 0.5 * untrained["fd"], (trained, untrained)
