"""Training metrics with clu: TensorBoard events and console lines from process 0.

Per log window: the step metrics averaged over the window (loss, mse, vb, learning rate,
gradient and parameter norms, skipped inputs), throughput (steps/s, images/s), TFLOP/s per device
and MFU from `dit_jax.flops` (training = 3 x forward, 2 FLOPs per multiply-accumulate), and
clu's ReportProgress (steps/s, ETA). Optionally a profiler window and a grid of EMA samples
(TensorBoard image + PNG under WORKDIR/samples/; video models: frame strips + an animated GIF);
for the built-in sources the grid is also scored (`dit_jax.quality.scorer`: digits ->
eval/accuracy, eval/fd, eval/variety_ratio; moving digits -> eval/frame_accuracy, eval/identity,
eval/mean_speed, ...), so sample quality is tracked during training. FID and the other ADM scores come from ``config.eval``
(``dit_jax.evaluation.during_training``) through ``write_eval``.
"""
import logging
import time
from typing import Callable

import einops
import jax
import numpy as np
from clu import metric_writers, periodic_actions
from etils import epath
from flax import traverse_util

from dit_jax import flops
from dit_jax import grids
from dit_jax import sharding
from dit_jax.train_state import TEXT_KEYS

SAMPLES_SUBDIR = "samples"
GRID_COLUMNS = 8
GRID_MAX_CLASSES = 10
TRAIN_FLOPS_PER_FORWARD_MAC = 3 * 2  # forward + 2x backward; a MAC is 2 FLOPs
_NOT_AVERAGED = ("finite", "skipped")
# Scores of the built-in sources logged under eval/ (the others stay in the sample command's JSON).
EVAL_SCALARS = {
    "digits": ("accuracy", "fd", "variety_ratio"),
    "digit_pairs": ("pair_accuracy", "held_out_pair_accuracy", "seen_pair_accuracy",
                    "swapped_accuracy"),
    "moving_digits": ("frame_accuracy", "identity", "identity_correct", "mean_speed",
                      "moving_fraction"),
}


def flatten_config(config) -> dict:
  """Scalar leaves of a config as {"a.b": value}, for TensorBoard hparams."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  return {k: v for k, v in flat.items() if isinstance(v, (bool, int, float, str))}


def image_grid(images: np.ndarray, columns: int = GRID_COLUMNS) -> np.ndarray:
  """[N, H, W, C] in [-1, 1] -> one uint8 [rows*H, columns*W, C] image (row-major; black cells
  fill the last row)."""
  rows = -(-len(images) // columns)
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  pixels = np.pad(pixels, ((0, rows * columns - len(images)), (0, 0), (0, 0), (0, 0)))
  return einops.rearrange(pixels, "(r k) h w c -> (r h) (k w) c", k=columns)


class TrainMonitor:
  """Collects step metrics and writes them every `config.log_every_steps` steps.

  The metrics stay on the devices until a log step, which fetches the whole window at once (the
  only time the host waits for the device here); `on_log(step, scalars)`, if given, also gets
  every window's scalars.

  Every process calls the same methods in the same order (sampling is a collective); only
  process 0 writes events, PNGs and console lines.
  """

  def __init__(self, config, workdir: str, model, mesh: jax.sharding.Mesh, start_step: int,
               on_log: Callable[[int, dict], None] | None = None):
    self.config = config
    self.on_log = on_log
    self.workdir = epath.Path(workdir)
    self.model = model
    self.mesh = mesh
    self.is_chief = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_chief)
    self.hooks = []
    if self.is_chief:
      self.hooks.append(periodic_actions.ReportProgress(
          num_train_steps=config.num_train_steps, writer=self.writer,
          every_steps=config.log_every_steps, every_secs=None))
      if config.get("profile_steps", 0):
        self.hooks.append(periodic_actions.Profile(
            logdir=workdir, num_profile_steps=config.profile_steps, profile_duration_ms=None,
            first_profile=start_step + min(10, config.num_train_steps // 2), every_secs=None))
    self.gflops = flops.dit_gflops(model)
    self.num_devices = mesh.size
    self.device_kind = mesh.devices.flat[0].device_kind
    self._window = []
    self._window_start = (start_step, time.perf_counter())
    self._sample_fn = None

  def write_hparams(self) -> None:
    self.writer.write_hparams(flatten_config(self.config))

  def reset_timer(self, step: int) -> None:
    """Starts the throughput window at `step` (call after compilation, so it is not counted)."""
    self._window_start = (step, time.perf_counter())

  def on_step(self, step: int, metrics: dict) -> None:
    """Records the (device) metrics of the step that ended at `step`; logs at window ends."""
    self._window.append(metrics)
    for hook in self.hooks:
      hook(step)
    if step % self.config.log_every_steps == 0 or step == self.config.num_train_steps:
      self._write_window(step)

  def _write_window(self, step: int) -> None:
    window = jax.device_get(self._window)
    start_step, start_time = self._window_start
    elapsed = max(time.perf_counter() - start_time, 1e-9)
    steps = max(step - start_step, 1)
    scalars = {f"train/{k}": float(np.mean([m[k] for m in window]))
               for k in window[0] if k not in _NOT_AVERAGED}
    if "skipped" in window[0]:
      scalars["data/skipped"] = float(np.sum([m["skipped"] for m in window]))
    images_per_s = steps * self.config.global_batch_size / elapsed
    scalars["perf/steps_per_s"] = steps / elapsed
    scalars["perf/images_per_s"] = images_per_s
    train_gflops = TRAIN_FLOPS_PER_FORWARD_MAC * self.gflops
    scalars["perf/tflops_per_device"] = train_gflops * images_per_s / self.num_devices / 1e3
    mfu = flops.mfu(images_per_s, self.gflops, self.num_devices, self.device_kind)
    if mfu is not None:
      scalars["perf/mfu"] = mfu
    self.writer.write_scalars(step, scalars)
    self.writer.flush()
    if self.on_log is not None:
      self.on_log(step, scalars)
    self._window = []
    self._window_start = (step, time.perf_counter())

  def write_samples(self, step: int, ema_params, rng: jax.Array) -> None:
    """Samples a class-conditional grid from the EMA weights; writes TensorBoard + PNG.

    Rows are classes 0..min(num_classes, 10)-1; sampling uses config.sample.sampler with
    config.sample_grid_steps steps, no guidance. Skipped for latent models (no decoder here).
    Video models write the first video of each class as frame strips (TensorBoard, PNG) and
    the whole grid as an animated GIF. Runs on a built-in source also log the grid's quality
    scores (8 samples per class: a coarse monitor; the sample command scores as many samples
    as asked).
    """
    if self.model.in_channels not in (1, 3):
      logging.info("Sample grid skipped: %d-channel latents need the VAE decoder (dit_jax.sample).",
                   self.model.in_channels)
      return
    from dit_jax import diffusion  # local: only sampling needs the samplers
    classes = min(self.model.num_classes, GRID_MAX_CLASSES)
    labels = np.repeat(np.arange(classes, dtype=np.int32), GRID_COLUMNS)
    prompts, text = None, {}
    if self.model.context_dim:  # a text model: a row per prompt instead of a row per class
      from dit_jax import text as text_lib  # local: class models need no tokenizer
      prompts = text_lib.grid_prompts(self.config, GRID_MAX_CLASSES * GRID_COLUMNS)
      if prompts is None:
        logging.info("Sample grid skipped: a text model needs config.sample.prompts.")
        return
      labels = np.zeros(len(prompts), np.int32)  # the "use the caption" label
      text = {k: jax.device_put(v, sharding.replicated(self.mesh))
              for k, v in zip(TEXT_KEYS, text_lib.encode_prompts(self.config, prompts))}
    shape = (len(labels),) + self.model.input_shape
    replicated = sharding.replicated(self.mesh)
    noise = jax.device_put(jax.random.normal(jax.random.fold_in(rng, step), shape), replicated)
    labels = jax.device_put(labels, replicated)
    if self._sample_fn is None:
      model = self.model

      def model_fn(x, t, params, y, **text):
        return model.apply({"params": params}, x, t, y, **text)
      self._sample_fn = model_fn
    samples = diffusion.sample(
        self.config.diffusion, self._sample_fn, noise, rng, sampler=self.config.sample.sampler,
        num_steps=self.config.sample_grid_steps,
        model_kwargs=dict(params=ema_params, y=labels, **text))
    samples = jax.jit(lambda s: s, out_shardings=replicated)(samples)
    samples = np.asarray(samples.addressable_data(0))
    video = samples.ndim == 5
    pixels = np.clip(np.round((samples + 1.0) * 127.5), 0, 255).astype(np.uint8)
    grid = grids.frame_strips(pixels[::GRID_COLUMNS]) if video else image_grid(samples)
    if self.is_chief:
      self.writer.write_images(step, {"samples/ema": grid[None]})
      from dit_jax import quality  # local: the classifiers load only when sampling
      source = self.config.data.get("source", "")
      scorer = quality.scorer(source)
      if scorer is not None:
        scores = scorer(samples, prompts or np.asarray(labels))
        self.writer.write_scalars(step, {f"eval/{k}": scores[k] for k in EVAL_SCALARS[source]})
      out_dir = self.workdir / SAMPLES_SUBDIR
      out_dir.mkdir(parents=True, exist_ok=True)
      with (out_dir / f"step_{step:08d}.png").open("wb") as f:
        grids.save_png(grid, f)
      if video:
        with (out_dir / f"step_{step:08d}.gif").open("wb") as f:
          grids.save_gif(grids.animated_grid(pixels, GRID_COLUMNS), f)
    self._window_start = (step, time.perf_counter())  # keep sampling out of the throughput

  def write_eval(self, step: int, scalars: dict[str, float]) -> None:
    """Logs sample-quality scores (``dit_jax.evaluation.during_training``) from process 0."""
    if self.is_chief:
      self.writer.write_scalars(step, scalars)
      self.writer.flush()
      logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    self._window_start = (step, time.perf_counter())  # keep the evaluation out of the throughput

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
