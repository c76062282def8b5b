"""Moving-digits training recipes side by side on one accelerator (issue 15).

A 2-core CPU trains one moving-digits run in about half an hour, so it can compare two or three
recipes a session; an accelerator runs the same recipe in seconds. This script trains several
variants of configs/moving_digits.py in one process, samples each one's EMA model and scores
the samples with ``dit_jax.video_quality`` (the numbers of the README's "Video" table), so the
recipes worth a full CPU run can be picked from one short device lease.

It uses the project's own train step (``train_state.jit_train_step``), sampler
(``sample.generate_images``) and scorer, but not the training job: the GPU machine has no
scikit-learn, clu or TensorFlow. The videos come from an npz written beforehand on a machine
that has scikit-learn, and the batches are drawn from it in a seeded random order (the job
uses grain's), so a run here matches a CPU run in recipe, not bit for bit.

  # where scikit-learn is installed (writes the train split, about 2 MB):
  python benchmarks/moving_digits_sweep.py --write_data .whl/moving_digits_train.npz
  # on the accelerator (the digit classifier from $DIT_JAX_CACHE, see dit_jax.quality):
  python benchmarks/moving_digits_sweep.py --data .whl/moving_digits_train.npz --json out.json \
      --run default:64 --run long:64:num_train_steps=12800 --run ema:64:ema_decay=0.999

Each ``--run NAME:BATCH[:KEY=VALUE,...]`` (as ``dit_jax.bench_matrix``) trains the default
config with the global batch BATCH and the dotted overrides. After every run the list so far is
written to ``--json`` and one line is printed; a run that fails is recorded with its error.
Runs stop being started once ``--budget_s`` seconds have passed.
"""
import json
import pathlib
import sys
import time
import traceback

import jax
import numpy as np
from absl import app, flags

from dit_jax import bench_matrix, config_files, flops, sample, sharding, video_quality
from dit_jax import train_state as ts

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "moving_digits.py"
LEVELS = 8.0  # sources.DigitsSource: x = level / 8 - 1 for the digits' integer levels 0..16

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so that importing this file (the
  tests) does not clash with other modules' flags of the same names."""
  flags.DEFINE_string("write_data", None, "Write the default config's train videos to this npz "
                      "(needs scikit-learn) and exit.")
  flags.DEFINE_string("data", None, "The npz from --write_data.")
  flags.DEFINE_multi_string("run", [], "NAME:BATCH[:KEY=VALUE,...]; see the module docstring.")
  flags.DEFINE_string("json", None, "Where the results go (rewritten after every run).")
  flags.DEFINE_integer("videos", 400, "Videos sampled per run, an equal number per class.")
  flags.DEFINE_integer("log_every", 800, "Steps between the printed losses.")
  flags.DEFINE_integer("score_every", 0, "Also sample and score the EMA model every this many "
                       "steps (0: only after the last step), for quality against steps.")
  flags.DEFINE_float("budget_s", 1e9, "No run starts after this many seconds.")


def build_config(overrides: dict):
  """configs/moving_digits.py's config with the dotted overrides (unknown keys raise)."""
  return config_files.override(config_files.load(CONFIG), overrides, CONFIG.name)


def write_data(path: str) -> None:
  """The default config's train split as digit levels (uint8, exact) and labels."""
  from dit_jax.data import moving_digits  # local: needs scikit-learn
  config = build_config({})
  source = moving_digits.MovingDigitsSource.from_config(config.data)
  rows = [source[i] for i in range(len(source))]
  levels = np.stack([np.rint((row["x"][..., 0] + 1.0) * LEVELS) for row in rows]).astype(np.uint8)
  labels = np.array([row["y"] for row in rows], np.int32)
  np.savez_compressed(path, levels=levels, labels=labels)
  print(f"wrote {path}: {levels.shape[0]} videos of shape {levels.shape[1:]} ({source!r})")


def load_data(path: str, config) -> tuple[np.ndarray, np.ndarray]:
  """(videos float32 (N, F, H, W, 1) in [-1, 1], labels), checked against the config's shape."""
  with np.load(path) as data:
    videos = data["levels"].astype(np.float32)[..., None] / LEVELS - 1.0
    labels = data["labels"]
  wanted = (config.data.num_frames, config.data.image_size, config.data.image_size, 1)
  if videos.shape[1:] != wanted:
    raise ValueError(f"{path} holds videos of shape {videos.shape[1:]}, the config asks for "
                     f"{wanted}; write the data again with --write_data.")
  return videos, labels


def batches(videos, labels, batch: int, seed: int):
  """Endless batches: each epoch a fresh seeded permutation, the last partial batch dropped."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(labels))
    for start in range(0, len(order) - batch + 1, batch):
      idx = order[start:start + batch]
      yield dict(x=videos[idx], y=labels[idx])


def score(config, mesh, ema_params, videos: int) -> dict:
  """Samples `videos` (an equal number per class) from the EMA weights and scores them."""
  per_class = videos // config.model.num_classes
  labels = np.repeat(np.arange(config.model.num_classes), per_class)
  shards = sharding.batch_shard_count(mesh)  # one batch, padded to a multiple of the devices
  samples = sample.generate_images(config, ema_params, labels, mesh=mesh,
                                   batch_size=shards * -(-len(labels) // shards))
  return video_quality.moving_digits_quality(samples, labels)


def train_and_score(name: str, batch: int, overrides: dict, data_path: str, *, videos: int,
                    log_every: int, score_every: int = 0) -> dict:
  """Trains one recipe for its config's num_train_steps, then samples and scores `videos`
  (also every `score_every` steps when > 0: the list `quality_by_step`)."""
  config = build_config(overrides)
  config.global_batch_size = batch
  mesh = sharding.create_mesh(config.mesh.to_dict())
  train_videos, train_labels = load_data(data_path, config)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  _, shardings = ts.abstract_train_state(config, mesh)
  state = ts.init_train_state(config, mesh, init_rng)
  step = ts.jit_train_step(config, mesh, shardings)
  to_device = lambda b: jax.device_put(b, sharding.batch_sharding(mesh))
  stream = batches(train_videos, train_labels, batch, config.seed)

  start = time.perf_counter()
  state, metrics = step(state, to_device(next(stream)), step_rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  losses, quality_by_step, train_s, sample_s = [], [], 0.0, 0.0
  start = time.perf_counter()
  for i in range(1, config.num_train_steps):
    state, metrics = step(state, to_device(next(stream)), step_rng)
    done = i + 1
    if done % log_every == 0 or done == config.num_train_steps:
      losses.append((done, float(metrics["loss"])))
      print(f"  [{name}] step {done}: loss {losses[-1][1]:.4f}", flush=True)
    if (score_every and done % score_every == 0) or done == config.num_train_steps:
      jax.block_until_ready(state)
      train_s += time.perf_counter() - start
      start = time.perf_counter()
      quality_by_step.append((done, score(config, mesh, state.ema_params, videos)))
      sample_s += time.perf_counter() - start
      start = time.perf_counter()
  gflops = flops.dit_gflops(ts.build_model(config))
  return dict(name=name, batch=batch, overrides=overrides, steps=config.num_train_steps,
              gflops_per_video=gflops,
              train_tflops=3 * gflops * batch * config.num_train_steps / 1e3,
              compile_s=compile_s, train_s=train_s, sample_s_with_compile=sample_s,
              losses=losses, cfg_scale=config.sample.cfg_scale,
              num_sampling_steps=config.sample.num_sampling_steps, videos=videos,
              quality=quality_by_step[-1][1], quality_by_step=quality_by_step)


def summary_line(r: dict) -> str:
  if "error" in r:
    return f"[{r['name']}] FAILED {r['error'][:300]}"
  q = r["quality"]
  return (f"[{r['name']}] {r['steps']} x {r['batch']}, {r['train_tflops']:.0f} Tflop: "
          f"frame accuracy {q['frame_accuracy']:.3f}, identity {q['identity']:.3f}, speed "
          f"{q['mean_speed']:.2f}, moving {q['moving_fraction']:.2f} (train {r['train_s']:.0f} s, "
          f"compile {r['compile_s']:.0f} s, sampling {r['sample_s_with_compile']:.0f} s); by step "
          + ", ".join(f"{step} {q['frame_accuracy']:.2f}/{q['identity']:.2f}"
                      for step, q in r["quality_by_step"]))


def main(argv) -> None:
  del argv
  if FLAGS.write_data:
    write_data(FLAGS.write_data)
    return
  if not FLAGS.data or not FLAGS.run:
    sys.exit("Give --data (from --write_data) and at least one --run.")
  specs = [bench_matrix.parse_run(spec) for spec in FLAGS.run]
  print(f"devices: {jax.devices()}", flush=True)
  results, began = [], time.perf_counter()
  for name, batch, overrides in specs:
    if time.perf_counter() - began > FLAGS.budget_s:
      results.append(dict(name=name, batch=batch, overrides=overrides,
                          error=f"not started: the {FLAGS.budget_s:.0f} s budget was spent"))
    else:
      try:
        results.append(train_and_score(name, batch, overrides, FLAGS.data, videos=FLAGS.videos,
                                       log_every=FLAGS.log_every, score_every=FLAGS.score_every))
      except Exception as e:  # pylint: disable=broad-except  (recorded; the next run goes on)
        traceback.print_exc()
        results.append(dict(name=name, batch=batch, overrides=overrides,
                            error=f"{type(e).__name__}: {str(e)[:2000]}"))
    print(summary_line(results[-1]), flush=True)
    if FLAGS.json:
      with open(FLAGS.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
