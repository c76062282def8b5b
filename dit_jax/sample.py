r"""Sampling from a checkpoint: EMA weights -> ADM-format npz, PNG grid, per-sample PNGs, quality.

  python -m dit_jax.sample --workdir workdirs/digits --num_samples 1000 \
      --output workdirs/digits/samples.npz --grid workdirs/digits/grid.png
  python -m dit_jax.sample --workdir workdirs/moving_digits --num_samples 100 \
      --output workdirs/moving_digits/samples.npz --grid workdirs/moving_digits/grid.gif \
      --gif_dir workdirs/moving_digits/gifs

Video models write ``arr_0`` of shape (N, F, H, W, C); their grid is an animated GIF (a ``.gif``
name: cell i plays video i) or frame strips (a ``.png`` name: a row per video), and
``--gif_dir`` / ``--png_dir`` get one GIF / frame strip per video.

Only the EMA weights are restored (no optimizer is built); a directory written by
``python -m dit_jax.convert`` (official weights) works the same way. Latent models are decoded
with the Flax SD-VAE named by ``--vae`` (default: the config's ``data.vae``).

Reproducibility: sample i's label, initial noise and per-step noise come only from
``fold_in(key(seed), i)``; each sample runs its own sampler chain (vmapped over the batch), so the
output does not depend on the device count, the number of hosts or the batch size. The batch is
split over all devices of all hosts (data parallel, parameters replicated); only one batch of
images is in memory at a time, and process 0 streams them into the npz.
"""
import contextlib
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils

from dit_jax import checkpoint, diffusion, distributed, paths, sharding
from dit_jax import sample_outputs
from dit_jax import text as text_lib
from dit_jax import train_state as ts
from dit_jax.data import sources

GUIDANCE_CHANNELS = diffusion.guidance.GUIDANCE_MODES
DEFAULT_BATCH_SIZE = 256
GRID_MAX_SAMPLES = 100
_LABEL_STREAM, _NOISE_STREAM = 0, 1


# ---------------------------------------------------------------- labels, noise and generation

def sample_labels(seed: int, num_samples: int, num_classes: int, given=None) -> np.ndarray:
  """Labels of samples 0..N-1: ``given`` cycled, or label i drawn from fold_in(seed key, i)."""
  if given:
    bad = [c for c in given if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f"labels {bad} are outside 0..{num_classes - 1} (the model's classes).")
    return np.resize(np.asarray(given, np.int32), num_samples)
  key = jax.random.fold_in(jax.random.key(seed), _LABEL_STREAM)
  draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, num_classes))
  with jax.default_device(jax.local_devices()[0]):
    return np.asarray(jax.jit(draw)(jnp.arange(num_samples)), np.int32)


def to_uint8(images: jax.Array) -> jax.Array:
  """[-1, 1] floats -> uint8 as DiT's sample_ddp.py does: clip(127.5 x + 128, 0, 255)."""
  return jnp.clip(127.5 * images + 128.0, 0, 255).astype(jnp.uint8)


def is_latent(config) -> bool:
  data = config.get("data") or {}
  return data.get("source") == sources.SOURCE_LATENTS or bool(data.get("vae"))


def make_decoder(config, vae_dir: str | None):
  """(decode(vae_params, x) -> images in [-1, 1], vae_params): the SD-VAE for latent models.

  Pixel models get the identity (and no parameters). The VAE parameters are returned so that
  they are passed to the jitted sampler as an argument instead of being baked into the program.
  """
  vae_dir = vae_dir or (config.get("data") or {}).get("vae")
  if not is_latent(config) and not vae_dir:
    return (lambda _, x: x), None
  if not vae_dir:
    raise ValueError("this is a latent model but no VAE is given: pass --vae DIR (a VAE converted "
                     "with `python -m dit_jax.models.vae_weights`) or set config.data.vae.")
  from dit_jax.models import vae, vae_weights  # local: pixel models need no VAE code
  model, params = vae_weights.load_vae(vae_dir)
  scale = (config.get("data") or {}).get("latent_scale") or model.scaling_factor

  def decode(vae_params, latents):  # images (N, h, w, c) or videos (N, F, h, w, c), frame by frame
    frames = latents.reshape((-1,) + latents.shape[-3:])
    images = model.apply({"params": vae_params}, frames / scale, method=vae.AutoencoderKL.decode)
    return images.reshape(latents.shape[:-3] + images.shape[-3:])
  return decode, params


class NonFiniteSamplesError(ValueError):
  """Sampling produced NaN or infinite values (before they would have become black pixels)."""


def check_sampling_settings(*, num_steps=None, cfg_scale=None, batch_size=None) -> None:
  """Raises ValueError naming the flag of a setting no sampler can use (None: the default).

  A NaN guidance scale would otherwise turn every sample into NaN, cast to all-black pixels.
  """
  if cfg_scale is not None and not math.isfinite(cfg_scale):
    raise ValueError(f"--cfg_scale={cfg_scale} is not a finite number; pass a guidance scale "
                     "such as 1.0 (no guidance), 1.5 or 4.0.")
  if num_steps is not None and num_steps < 1:
    raise ValueError(f"--num_sampling_steps={num_steps}: a sampler needs at least 1 step (leave "
                     "the flag out for the config's config.sample.num_sampling_steps).")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"--batch_size={batch_size}: give a positive multiple of the device count "
                     "(or leave the flag out).")


def parse_labels(labels) -> list[int] | None:
  """Class indices from ints or strings (``--labels 3,1,4``); None when none are given."""
  if not labels:
    return None
  try:
    return [int(c) for c in labels]
  except (TypeError, ValueError):
    raise ValueError(f"--labels {','.join(map(str, labels))}: class labels are integers "
                     "(class indices), e.g. --labels 3,1,4.") from None


def make_generate_fn(config, *, sampler: str, num_steps: int, cfg_scale: float = 1.0,
                     guidance: str = "official", vae_dir: str | None = None):
  """Returns jitted ``generate(params, key, indices, labels, text) -> (uint8 NHWC images,
  finite)``; ``text`` is {} for class models, else the per-sample ``context`` and
  ``context_mask`` (``dit_jax.text.encode_prompts``).

  Sample ``indices[j]`` with label ``labels[j]`` starts from noise drawn from
  ``fold_in(key, indices[j])`` and runs its own sampler chain, so the result for index i is
  the same in any batch and on any number of devices. ``finite[j]`` says whether sample j was
  finite before the uint8 cast (which maps NaN to 0). Functions are cached per (config,
  settings), so periodic calls (a training hook) compile once.
  """
  if guidance not in GUIDANCE_CHANNELS:
    raise ValueError(f"guidance={guidance!r}; use one of {tuple(GUIDANCE_CHANNELS)}.")
  config_json = json.dumps(config.to_dict() if hasattr(config, "to_dict") else config,
                           sort_keys=True, default=str)
  return _cached_generate_fn(config_json, sampler, int(num_steps), float(cfg_scale), guidance,
                             vae_dir)


@functools.lru_cache(maxsize=8)
def _cached_generate_fn(config_json, sampler, num_steps, cfg_scale, guidance, vae_dir):
  config = ml_collections.ConfigDict(json.loads(config_json))
  model = ts.build_model(config)
  shape = model.input_shape
  decode, vae_params = make_decoder(config, vae_dir)
  diffusion_cfg = config.diffusion

  def model_fn(x, t, y, params, **text):
    return model.apply({"params": params}, x, t, y, **text)

  def one(params, key, index, label, text):
    noise_key, step_key = jax.random.split(jax.random.fold_in(key, index))
    noise = jax.random.normal(noise_key, (1, *shape), jnp.float32)
    text = {k: v[None] for k, v in text.items()}
    out = diffusion.sample(
        diffusion_cfg, model_fn, noise, step_key, sampler=sampler, num_steps=num_steps,
        model_kwargs=dict(y=label[None], params=params, **text), cfg_scale=cfg_scale,
        null_label=model.num_classes, guidance_channels=GUIDANCE_CHANNELS[guidance])
    return out[0]

  @jax.jit
  def generate(params, key, indices, labels, text, vae_params):
    samples = jax.vmap(one, in_axes=(None, None, 0, 0, 0))(params, key, indices, labels, text)
    images = decode(vae_params, samples)
    return to_uint8(images), jnp.isfinite(images).all(axis=tuple(range(1, images.ndim)))
  return functools.partial(generate, vae_params=vae_params)


def _resize_rows(rows: np.ndarray, n: int) -> np.ndarray:
  """``rows`` cycled to exactly n rows (the padding of a last, partial batch)."""
  return rows[np.arange(n) % len(rows)]


def _global_array(values: np.ndarray, mesh) -> jax.Array:
  """A batch-sharded global array from a host array every process holds in full."""
  return jax.make_array_from_callback(values.shape, sharding.batch_sharding(mesh),
                                      lambda index: values[index])


def iterate_samples(config, params, labels: np.ndarray, *, seed: int = 0, sampler=None,
                    num_steps=None, cfg_scale=None, guidance=None, batch_size=None,
                    mesh=None, vae_dir=None, progress=False, text=None):
  """Yields (start, uint8 images) batch by batch for samples 0..len(labels)-1, on every process.

  Text models take ``text``: dict(context=(N, L[, D]), context_mask=(N, L)) for the N samples
  (``dit_jax.text.encode_prompts``), with ``labels`` all 0 (the "use the caption" label).

  Defaults (sampler, num_steps, cfg_scale, guidance) come from ``config.sample`` (guidance:
  "official" where the config does not say). ``params`` are the EMA
  weights, e.g. from ``checkpoint.restore_ema_params``. The last batch is padded (padding is
  computed and dropped), so every batch compiles to the same program. Raises
  NonFiniteSamplesError, naming the samples, when a batch comes out NaN or infinite.
  """
  sample_cfg = config.get("sample") or {}
  sampler = sampler or sample_cfg.get("sampler", "ddpm")
  num_steps = sample_cfg.get("num_sampling_steps", 250) if num_steps is None else num_steps
  cfg_scale = sample_cfg.get("cfg_scale", 1.0) if cfg_scale is None else cfg_scale
  guidance = guidance or sample_cfg.get("guidance") or "official"
  check_sampling_settings(num_steps=num_steps, cfg_scale=cfg_scale, batch_size=batch_size)
  mesh = mesh or sharding.create_mesh({"data": -1})
  shards = sharding.batch_shard_count(mesh)
  num = len(labels)
  if batch_size is None:
    batch_size = shards * math.ceil(min(DEFAULT_BATCH_SIZE, num) / shards)
  if batch_size % shards:
    raise ValueError(f"batch_size={batch_size} is not a multiple of the {shards} devices; "
                     f"use a multiple of {shards}.")
  generate = make_generate_fn(config, sampler=sampler, num_steps=int(num_steps),
                              cfg_scale=float(cfg_scale), guidance=guidance, vae_dir=vae_dir)
  key = jax.random.fold_in(jax.random.key(seed), _NOISE_STREAM)
  starts = range(0, num, batch_size)
  if progress:
    from tqdm import tqdm  # local: only the CLI shows a bar
    starts = tqdm(starts, unit="batch", disable=jax.process_index() != 0)
  for start in starts:
    indices = np.arange(start, start + batch_size, dtype=np.int32)
    batch_labels = np.resize(labels[start:start + batch_size], batch_size).astype(np.int32)
    batch_text = {k: _global_array(_resize_rows(v[start:start + batch_size], batch_size), mesh)
                  for k, v in (text or {}).items()}
    images, finite = multihost_utils.process_allgather(
        generate(params, key, _global_array(indices, mesh), _global_array(batch_labels, mesh),
                 batch_text),
        tiled=True)
    bad = np.flatnonzero(~np.asarray(finite)[:num - start]) + start
    if bad.size:
      raise NonFiniteSamplesError(
          f"samples {bad[:10].tolist()}{' ...' if bad.size > 10 else ''} ({bad.size} of the batch "
          f"of samples {start}..{min(start + batch_size, num) - 1}) came out NaN or infinite with "
          f"sampler={sampler}, num_steps={num_steps}, cfg_scale={cfg_scale}; the weights or these "
          "settings diverge (check that the checkpoint's EMA weights are finite).")
    yield start, np.asarray(images)[:num - start]


def generate_images(config, params, labels, **kwargs) -> np.ndarray:
  """All samples for ``labels`` as one uint8 NHWC array (for small N: training hooks, notebooks)."""
  labels = np.asarray(labels, np.int32)
  return np.concatenate([images for _, images in iterate_samples(config, params, labels, **kwargs)])


# ---------------------------------------------------------------- the command


def check_request(*, num_samples: int, output: str | None = None, grid: str | None = None,
                  png_dir: str | None = None, grid_cols: int = 10, labels=None,
                  gif_dir: str | None = None, **sampling) -> list[int] | None:
  """Checks the arguments of ``sample_to_files`` before any work (restoring, compiling,
  sampling), so that no samples are lost to a bad path at the end; makes the output
  directories. Raises ValueError naming the flag and the fix; returns ``parse_labels(labels)``.
  """
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples}: ask for at least 1 sample.")
  if grid_cols < 1:
    raise ValueError(f"--grid_cols={grid_cols}: the grid needs at least 1 column.")
  check_sampling_settings(**{k: sampling.get(k) for k in ("num_steps", "cfg_scale", "batch_size")})
  parsed = parse_labels(labels)
  if grid:
    from PIL import Image  # local: only outputs need pillow
    ext = os.path.splitext(grid)[1].lower()
    if Image.registered_extensions().get(ext) not in Image.SAVE:
      raise ValueError(f"--grid {grid}: pillow cannot write {ext or 'extension-less'} images; "
                       "give the grid a .png name.")
  if jax.process_index() == 0:  # the process that writes
    for path, flag in ((output, "--output"), (grid, "--grid")):
      if path:
        paths.prepare_output_file(path, flag)
    for path, flag in ((png_dir, "--png_dir"), (gif_dir, "--gif_dir")):
      if path:
        paths.prepare_output_dir(path, flag)
  return parsed


def sample_to_files(workdir: str, *, num_samples: int, output: str | None = None,
                    grid: str | None = None, png_dir: str | None = None, seed: int = 0,
                    step: int | None = None, labels=None, evaluate: bool | None = None,
                    grid_cols: int = 10, gif_dir: str | None = None, prompts=None,
                    **sampling) -> dict:
  """What ``python -m dit_jax.sample`` does: restore the EMA weights, sample, write outputs.

  Args:
    workdir: training workdir or converted checkpoint (local path or gs://).
    num_samples: how many samples; sample i depends only on (seed, i).
    output: npz path (``arr_0`` uint8 NHWC or NFHWC, ``labels``); grid: image of the first
      GRID_MAX_SAMPLES samples in ``grid_cols`` columns (videos: animated for a .gif name, frame
      strips otherwise); png_dir: one PNG per sample (videos: its frame strip); gif_dir: one
      animated GIF per video.
    step: checkpoint step (default: the latest).
    labels: classes cycled over the samples (default: drawn from the seed).
    prompts: text models: the prompts, cycled over the samples (kept in the npz as ``prompts``).
    evaluate: the quality metrics of a built-in source (``quality.scorer``: digits, moving
      digits; default: when the config's source has them); printed and written next to the
      npz as ``<output>_quality.json``.
    **sampling: sampler, num_steps, cfg_scale, guidance, batch_size, vae_dir (see
      ``iterate_samples``).

  Returns:
    The quality metrics on process 0 when evaluated, else {}.
  """
  labels = check_request(num_samples=num_samples, output=output, grid=grid, png_dir=png_dir,
                         grid_cols=grid_cols, labels=labels, gif_dir=gif_dir, **sampling)
  config, params = checkpoint.restore_ema_params(workdir, step)
  model = ts.build_model(config)
  text = None
  if model.context_dim:
    if not prompts:
      raise ValueError("this is a text-conditioned model: pass --prompts FILE (one prompt a line) "
                       "or --prompt TEXT.")
    prompts = [prompts[i % len(prompts)] for i in range(num_samples)]
    labels = np.zeros(num_samples, np.int32)  # the "use the caption" label
    text = dict(zip(ts.TEXT_KEYS, text_lib.encode_prompts(config, prompts)))
  elif prompts:
    raise ValueError("--prompts/--prompt: this model is class-conditional (config.model.context_dim "
                     "is 0); pass --labels instead.")
  else:
    labels = sample_labels(seed, num_samples, model.num_classes, labels)
  from dit_jax import quality  # local: only built-in sources have a scorer
  scorer = quality.scorer((config.get("data") or {}).get("source", ""))
  if evaluate and scorer is None:
    raise ValueError("--eval=true: this model's data source has no built-in quality metric "
                     "(digits and moving_digits do); use python -m dit_jax.evaluate for FID.")
  evaluate = scorer is not None if evaluate is None else evaluate
  writes = jax.process_index() == 0
  writer = None
  grid_images, eval_images = [], []
  with contextlib.ExitStack() as outputs:  # an npz left incomplete by an error is removed
    for start, images in iterate_samples(config, params, labels, seed=seed, progress=True,
                                         text=text, **sampling):
      if not writes:
        continue
      if writer is None and output:
        writer = outputs.enter_context(
            sample_outputs.NpzWriter(output, (num_samples, *images.shape[1:]), labels,
                      prompts if text is not None else None))
      if writer is not None:
        writer.write(images)
      grid_images.append(images[:max(0, GRID_MAX_SAMPLES - start)])
      if evaluate:
        eval_images.append(images)
      sample_outputs.write_per_sample(images, start, png_dir, gif_dir)
  if not writes:
    return {}
  if writer is not None:
    logging.info("wrote %d samples to %s", num_samples, output)
  if grid:
    sample_outputs.write_grid(np.concatenate(grid_images), grid, grid_cols)
    logging.info("wrote the grid to %s", grid)
  if not evaluate:
    return {}
  scores = scorer(np.concatenate(eval_images), prompts or labels)
  print(json.dumps(scores, indent=1))
  if output:
    with open(os.path.splitext(output)[0] + "_quality.json", "w") as f:
      json.dump(scores, f, indent=1)
  return scores


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so that importing this module
  next to dit_jax.train (which has --workdir too) never defines a flag twice."""
  flags.DEFINE_string("workdir", None, "Training workdir or converted checkpoint (local or gs://).",
                      required=True)
  flags.DEFINE_integer("num_samples", 100, "How many samples.")
  flags.DEFINE_string("output", None, "npz to write (arr_0: uint8 NHWC, videos NFHWC; labels).")
  flags.DEFINE_integer("seed", 0, "Sample i depends only on (seed, i).")
  flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale (default config.sample).")
  flags.DEFINE_integer("num_sampling_steps", None, "Sampler steps (default config.sample).")
  flags.DEFINE_enum("sampler", None, ["ddpm", "ddim", "euler", "heun", "euler_maruyama"],
                    "Sampler (default config.sample.sampler).")
  flags.DEFINE_list("labels", None, "Classes, cycled over the samples (default: drawn at random).")
  flags.DEFINE_string("prompts", None, "Text models: a file of prompts, one a line, cycled over "
                      "the samples (kept in the npz as `prompts`).")
  flags.DEFINE_multi_string("prompt", None, "Text models: a prompt (repeat the flag for more).")
  flags.DEFINE_string("grid", None, f"Grid of the first {GRID_MAX_SAMPLES} samples (.png; videos: "
                      ".gif animates it, .png shows frame strips).")
  flags.DEFINE_integer("grid_cols", 10, "Columns of the grid.")
  flags.DEFINE_string("png_dir", None, "Also write one PNG per sample here (videos: frame strips).")
  flags.DEFINE_string("gif_dir", None, "Video models: also write one animated GIF per sample here.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("batch_size", None, "Global batch size (a multiple of the device count).")
  flags.DEFINE_enum("guidance", None, list(GUIDANCE_CHANNELS),
                    "CFG on the first 3 output channels as the released code ('official') or on "
                    "all prediction channels ('all'); default config.sample.guidance, else "
                    "'official'.")
  flags.DEFINE_string("vae", None, "Converted SD-VAE directory for latent models (default data.vae).")
  flags.DEFINE_enum("eval", "auto", ["auto", "true", "false"],
                    "Quality metrics of the built-in sources (digits: dit_jax.quality, "
                    "moving_digits: dit_jax.video_quality); 'auto' = for those sources.")
  distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not (f.output or f.grid or f.png_dir or f.gif_dir or f.eval == "true"):
    raise app.UsageError("nothing to write: pass --output FILE.npz and/or --grid FILE.png / "
                         "--png_dir DIR / --gif_dir DIR.")
  distributed.initialize_from_flags()
  try:  # sample_to_files checks them too; here a bad flag gets absl's usage error
    check_request(num_samples=f.num_samples, output=f.output, grid=f.grid, png_dir=f.png_dir,
                  grid_cols=f.grid_cols, labels=f.labels, gif_dir=f.gif_dir,
                  num_steps=f.num_sampling_steps,
                  cfg_scale=f.cfg_scale, batch_size=f.batch_size)
    prompts = (text_lib.read_prompts(f.prompts) if f.prompts else []) + list(f.prompt or [])
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  sample_to_files(
      f.workdir, num_samples=f.num_samples, output=f.output, grid=f.grid, png_dir=f.png_dir,
      seed=f.seed, step=f.step, labels=f.labels, prompts=prompts,
      evaluate=None if f.eval == "auto" else f.eval == "true", grid_cols=f.grid_cols,
      gif_dir=f.gif_dir,
      sampler=f.sampler, num_steps=f.num_sampling_steps, cfg_scale=f.cfg_scale,
      guidance=f.guidance, batch_size=f.batch_size, vae_dir=f.vae)


if __name__ == "__main__":
  define_flags()
  app.run(main)
