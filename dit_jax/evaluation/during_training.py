"""FID and friends during training (``config.eval``): sample, extract, score, log; no files.

Every ``config.eval.every_steps`` steps the training job samples ``num_samples`` images from the
EMA weights on the training mesh (labels drawn from ``eval.seed``, the same ones every time, so
successive evaluations differ only by the weights), feeds each batch straight into the Inception
features and logs ``eval/fid``, ``eval/sfid``, ``eval/is``, ``eval/precision`` and
``eval/recall``. The Inception weights and the reference are loaded once, at the start.

  config.eval = dict(every_steps=50_000, num_samples=10_000, reference="VIRTUAL_imagenet256_labeled.npz",
                     inception_weights="", sampler="ddpm", num_sampling_steps=250, cfg_scale=1.0,
                     guidance="official", batch_size=0, seed=0)
"""
import math

import numpy as np
from etils import epath

from dit_jax.evaluation import features as features_lib
from dit_jax.evaluation import inception
from dit_jax.evaluation import reference as reference_lib
from dit_jax.evaluation import scores

# Logged name of each score (TensorBoard tag "eval/<name>").
LOGGED_NAMES = dict(fid="fid", sfid="sfid", inception_score="is", precision="precision",
                    recall="recall")


def enabled(config) -> bool:
  return bool((config.get("eval") or {}).get("every_steps", 0))


def check_config(config) -> list[str]:
  """Problems of ``config.eval`` (empty when evaluation is off or usable), each naming the field."""
  if not enabled(config):
    return []
  from dit_jax import sample  # local: the sampler pulls in the model and checkpoint code
  ev = config.eval
  problems = []
  if ev.every_steps < 0:
    problems.append(f"config.eval.every_steps={ev.every_steps} must be >= 0 (0: off).")
  if ev.get("num_samples", 0) < 2:
    problems.append(f"config.eval.num_samples={ev.get('num_samples')} must be >= 2 (a "
                    "covariance needs two samples; FID-10K is the usual choice).")
  ref = ev.get("reference") or ""
  if not ref:
    problems.append("config.eval.reference is empty: give a reference npz (ADM's reference "
                    "batch, or one from `python -m dit_jax.evaluate --make_reference`).")
  elif not epath.Path(ref).exists():
    problems.append(f"config.eval.reference={ref} does not exist.")
  weights = ev.get("inception_weights") or ""
  if weights and "://" not in weights and not epath.Path(weights).exists():
    problems.append(f"config.eval.inception_weights={weights} does not exist (leave it empty "
                    "to download pytorch-fid's weights).")
  if sample.is_latent(config) and not (config.get("data") or {}).get("vae"):
    problems.append("config.eval needs the SD-VAE to decode latent samples: set config.data.vae.")
  if (config.get("model") or {}).get("num_frames", 0):
    problems.append("config.eval scores images with Inception features; this is a video model "
                    "(config.model.num_frames > 0): set config.eval.every_steps=0 (moving digits "
                    "are scored by the sample grid, dit_jax.video_quality).")
  if not math.isfinite(ev.get("cfg_scale", 1.0)):
    problems.append(f"config.eval.cfg_scale={ev.get('cfg_scale')} must be a finite number.")
  return problems


class TrainingEvaluator:
  """Scores the EMA model of a training run; call it on every process at the same steps."""

  def __init__(self, config, mesh):
    from dit_jax import sample  # local: the sampler pulls in the model and checkpoint code
    from dit_jax import train_state as ts
    self._config = config
    self._ev = config.eval
    self._mesh = mesh
    self._sample = sample
    self._params = inception.load_params(self._ev.get("inception_weights") or None)
    self._reference = reference_lib.load_reference(self._ev.reference, self._params, mesh=mesh)
    num_classes = ts.build_model(config).num_classes
    self._labels = sample.sample_labels(self._ev.get("seed", 0), self._ev.num_samples, num_classes)
    self._batch_size = (self._ev.get("batch_size")
                        or features_lib.default_batch_size(mesh, self._ev.num_samples))

  def due(self, step: int) -> bool:
    return step % self._ev.every_steps == 0

  def __call__(self, ema_params) -> dict[str, float]:
    """{"eval/fid": ..., ...} of ``num_samples`` fresh samples (scores that cannot be computed
    from the reference, e.g. sFID without spatial statistics, are left out)."""
    ev = self._ev
    extractor = None
    for _, images in self._sample.iterate_samples(
        self._config, ema_params, self._labels, seed=ev.get("seed", 0), sampler=ev.get("sampler"),
        num_steps=ev.get("num_sampling_steps"), cfg_scale=ev.get("cfg_scale"),
        guidance=ev.get("guidance"), batch_size=self._batch_size, mesh=self._mesh):
      if extractor is None:  # the image shape is known once the first batch is decoded
        extractor = features_lib.FeatureExtractor(self._params, images.shape[1:], mesh=self._mesh,
                                                  batch_size=self._batch_size)
      extractor.add_images(images)
    result = scores.score(extractor.result(), self._reference)
    return {f"eval/{LOGGED_NAMES[k]}": float(v) for k, v in result.items()
            if k in LOGGED_NAMES and v is not None and np.isfinite(v)}
