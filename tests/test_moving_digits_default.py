"""The moving-digits video default learns, and its samples come out as videos (issue 15).

The judge is independent of the model: `dit_jax.video_quality`, the 8x8 digit classifier of
`dit_jax.quality` applied to the located digit of every frame (real moving digits score >= 0.98
per-frame accuracy, tests/test_video_quality.py). A brief run cannot sample recognizable digits
(the full default draws the asked digit in most frames: README "Video"), so learning is judged on
the denoiser: test-split videos noised to signal-to-noise ratio 1 (flow time t = 0.5) and denoised
in one step by the EMA model must come back closer to the originals than an untrained model
(adaLN-Zero predicts v = 0: the noisy input itself) brings them, and more of their frames must be
classified as the right digit (measured with the default's flow matching and Muon, 200 steps of
its 32 videos: per-frame accuracy 0.48 against 0.33, error 0.070 against 0.46; 300 steps gave
0.63 and 0.052). The run logs the moving-digits scores with its sample grid (TensorBoard, PNG
frame strips, animated GIF), and the sample command writes (N, F, H, W, C) uint8 videos, labels,
an animated grid, one GIF per video and the quality JSON.
"""
import json

import jax
import numpy as np
import pytest
from PIL import Image

import brief_training  # tests/ is on sys.path
from configs import moving_digits
from dit_jax import checkpoint, metrics, sample, sharding, sweep, train, video_quality
from dit_jax import train_state as ts
from dit_jax.data import moving_digits as moving_digits_data

BRIEF_STEPS = 200
NUM_SAMPLES = 20
SAMPLING = dict(sampler="euler", num_steps=10, cfg_scale=1.0)


def denoised_scores(config, params, videos, labels):
  """Per-frame quality and MSE of one-step denoised test videos (brief_training)."""
  denoised = brief_training.one_step_denoised(config, params, videos, labels)
  scores = video_quality.moving_digits_quality(denoised, labels)
  return dict(scores, mse=float(np.mean((denoised - videos) ** 2)))


@pytest.mark.slow
def test_briefly_trained_video_default_beats_an_untrained_model(tmp_path):
  config = brief_training.brief_config(moving_digits.get_config(), BRIEF_STEPS, 10,
                                       batch_size=None)  # the default's 32 videos
  one_device = jax.devices()[:1]
  workdir = tmp_path / "run"
  train.train(config, str(workdir), devices=one_device)

  scalars = sweep.read_scalars(str(workdir))
  for name in metrics.EVAL_SCALARS["moving_digits"]:
    assert [step for step, _ in scalars[f"eval/{name}"]] == [BRIEF_STEPS], name
  grid_gif = Image.open(workdir / "samples" / f"step_{BRIEF_STEPS:08d}.gif")
  assert grid_gif.n_frames == 8
  assert (workdir / "samples" / f"step_{BRIEF_STEPS:08d}.png").exists()

  out = tmp_path / "out"
  labels = np.tile(np.arange(10), NUM_SAMPLES // 10)
  scores = sample.sample_to_files(
      str(workdir), num_samples=NUM_SAMPLES, labels=list(labels), output=str(out / "s.npz"),
      grid=str(out / "grid.gif"), gif_dir=str(out / "gifs"), **SAMPLING)
  with np.load(out / "s.npz") as npz:
    assert npz["arr_0"].shape == (NUM_SAMPLES, 8, 16, 16, 1) and npz["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(npz["labels"], labels)
    rescored = video_quality.moving_digits_quality(npz["arr_0"], npz["labels"])
  assert rescored == scores == json.loads((out / "s_quality.json").read_text())
  assert Image.open(out / "grid.gif").n_frames == 8
  assert Image.open(out / "gifs" / f"{NUM_SAMPLES - 1:06d}.gif").n_frames == 8

  source = moving_digits_data.MovingDigitsSource(split="test")
  examples = [source[i] for i in range(0, len(source), len(source) // 100)][:100]
  videos = np.stack([e["x"] for e in examples])
  classes = np.array([e["y"] for e in examples])
  _, params = checkpoint.restore_ema_params(str(workdir))
  mesh = sharding.create_mesh({"data": -1}, one_device)
  untrained_params = jax.device_get(ts.init_train_state(config, mesh, jax.random.key(0)).ema_params)
  trained = denoised_scores(config, params, videos, classes)
  untrained = denoised_scores(config, untrained_params, videos, classes)
  assert trained["mse"] < 0.5 * untrained["mse"], (trained, untrained)
  assert trained["frame_accuracy"] > untrained["frame_accuracy"] + 0.05, (trained, untrained)
