"""Tests of `python -m dit_jax.sample` on small checkpoints written in the test.

Checks against independent facts rather than recorded outputs: the same seed gives identical
samples on 1 device (a subprocess) and on 8 devices with different batch sizes; the npz is what
`np.load` reads as ADM's `arr_0` (uint8 NHWC) plus `labels`; the restore reads the EMA weights
(not the raw ones) without building an optimizer; a tiny random state dict with the official key
names and shapes (DIT-FACTS.md), converted by `python -m dit_jax.convert`, samples through the
same command with a Flax SD-VAE decoding its latents.
"""
import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch
from flax import linen as nn

from dit_jax import checkpoint, convert, grids, sample, sample_outputs, sharding
from dit_jax import train_state as ts

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_SAMPLES = 12
STEPS = 8
SEED = 3


def load_config(name, arg):
  spec = importlib.util.spec_from_file_location(f"{name}_config", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_module(module, *args, devices=None, ok=True):
  """Runs ``python -m module args``; asserts it succeeded (``ok``) or failed (not ``ok``)."""
  env = dict(os.environ)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert (proc.returncode == 0) == ok, \
      f"{module} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
  """A digits smoke checkpoint in the training layout (with optimizer state) whose EMA weights
  differ from the raw weights and are far from the zero init, so samples depend on them."""
  workdir = tmp_path_factory.mktemp("digits")
  config = load_config("digits", "smoke")
  mesh = sharding.create_mesh({"data": -1})
  state = ts.init_train_state(config, mesh, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  ema = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  state = state.replace(ema_params=jax.tree.unflatten(treedef, ema))
  with checkpoint.manager_for_config(str(workdir), config) as manager:
    checkpoint.save(manager, state, config, force=True)
    manager.wait_until_finished()
  return workdir, config, state


@pytest.fixture(scope="module")
def cli_outputs(trained_like, tmp_path_factory):
  """The command line on ONE device, with labels given, grid and per-sample PNGs."""
  workdir, _, _ = trained_like
  out = tmp_path_factory.mktemp("out")
  run_module("dit_jax.sample", "--workdir", workdir, "--num_samples", NUM_SAMPLES,
             "--output", out / "s.npz", "--grid", out / "grid.png", "--png_dir", out / "png",
             "--seed", SEED, "--num_sampling_steps", STEPS, "--labels", "3,1,4", "--batch_size", 5,
             "--eval", "false", devices=1)
  return out


def test_same_samples_on_1_and_8_devices_and_any_batch_size(trained_like, cli_outputs, devices):
  workdir, _, _ = trained_like
  config, params = checkpoint.restore_ema_params(str(workdir))
  labels = np.resize([3, 1, 4], NUM_SAMPLES)
  mesh = sharding.create_mesh({"data": -1}, devices)
  eight = [sample.generate_images(config, params, labels, seed=SEED, num_steps=STEPS,
                                  batch_size=b, mesh=mesh) for b in (8, 16)]
  one = np.load(cli_outputs / "s.npz")["arr_0"]
  np.testing.assert_array_equal(eight[0], eight[1])
  np.testing.assert_array_equal(eight[0], one)
  assert one.std() > 10, "samples are constant; the test would not see a seeding bug"
  other_seed = sample.generate_images(config, params, labels, seed=SEED + 1, num_steps=STEPS,
                                      batch_size=8, mesh=mesh)
  assert np.mean(other_seed != one) > 0.3


def test_npz_grid_and_png_outputs(cli_outputs):
  with np.load(cli_outputs / "s.npz") as npz:
    assert sorted(npz.files) == ["arr_0", "labels"]
    images, labels = npz["arr_0"], npz["labels"]
  assert images.dtype == np.uint8 and images.shape == (NUM_SAMPLES, 8, 8, 1)
  np.testing.assert_array_equal(labels, np.resize([3, 1, 4], NUM_SAMPLES))
  from PIL import Image
  grid = np.asarray(Image.open(cli_outputs / "grid.png"))
  cell = 8 * math.ceil(grids.GRID_MIN_CELL_PX / 8)  # enlarged 8x8 digits
  rows = math.ceil(NUM_SAMPLES / 10)
  assert grid.shape == (rows * (cell + 2) + 2, 10 * (cell + 2) + 2)
  assert grid[2:2 + cell:4, 2:2 + cell:4].tolist() == images[0, :, :, 0].tolist()
  pngs = sorted(os.listdir(cli_outputs / "png"))
  assert pngs == [f"{i:06d}.png" for i in range(NUM_SAMPLES)]
  np.testing.assert_array_equal(np.asarray(Image.open(cli_outputs / "png" / pngs[5])), images[5, :, :, 0])


@pytest.mark.parametrize("n, ncols", [(7, 3), (2, 10)])
def test_make_grid_cells_and_borders(n, ncols):
  images = np.random.default_rng(0).integers(1, 256, (n, 8, 4, 3), dtype=np.uint8)
  grid = grids.make_grid(images, ncols=ncols, pad=2)
  scale = math.ceil(grids.GRID_MIN_CELL_PX / 8)  # nearest-neighbour enlargement
  h, w, cols = 8 * scale, 4 * scale, min(ncols, n)
  rows = math.ceil(n / cols)
  assert grid.shape == (rows * (h + 2) + 2, cols * (w + 2) + 2, 3)
  painted = np.zeros(grid.shape[:2], bool)
  for i in range(rows * cols):
    r, k = divmod(i, cols)
    top, left = 2 + r * (h + 2), 2 + k * (w + 2)
    want = images[i].repeat(scale, 0).repeat(scale, 1) if i < n else 0
    np.testing.assert_array_equal(grid[top:top + h, left:left + w], want)
    painted[top:top + h, left:left + w] = True
  assert not grid[~painted].any()  # borders are black


def test_labels_depend_only_on_seed_and_index():
  a = sample.sample_labels(7, 50, 10)
  np.testing.assert_array_equal(a[:20], sample.sample_labels(7, 20, 10))
  assert set(a.tolist()) <= set(range(10)) and len(set(a.tolist())) > 5
  with pytest.raises(ValueError, match="outside"):
    sample.sample_labels(0, 4, 10, [3, 10])


def test_npz_writer_streams_batches(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(10, dtype=np.int32)
  with sample_outputs.NpzWriter(str(tmp_path / "a.npz"), images.shape, labels) as writer:
    for start in range(0, 10, 4):
      writer.write(images[start:start + 4])
  with np.load(tmp_path / "a.npz") as npz:
    np.testing.assert_array_equal(npz["arr_0"], images)
    np.testing.assert_array_equal(npz["labels"], labels)
  writer = sample_outputs.NpzWriter(str(tmp_path / "b.npz"), images.shape, labels)
  writer.write(images[:3])
  with pytest.raises(ValueError, match="missing"):
    writer.close()


def test_restore_reads_ema_without_optimizer(trained_like, monkeypatch):
  workdir, _, state = trained_like

  def no_optimizer(*args, **kwargs):
    raise AssertionError("sampling must not build an optimizer")
  monkeypatch.setattr(ts, "make_optimizer", no_optimizer)
  monkeypatch.setattr(ts, "abstract_train_state", no_optimizer)
  config, params = checkpoint.restore_ema_params(str(workdir))
  assert "opt_state" not in params
  for got, ema, raw in zip(jax.tree.leaves(params), jax.tree.leaves(state.ema_params),
                           jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ema))
  assert not all(np.array_equal(np.asarray(e), np.asarray(r)) for e, r in
                 zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)))
  images = sample.generate_images(config, params, [0, 1], num_steps=2, batch_size=8)
  assert images.shape == (2, 8, 8, 1)


# ---------------------------------------------------------------- refused settings and results


def test_cli_refuses_a_non_finite_guidance_scale(trained_like, tmp_path):
  workdir, _, _ = trained_like
  proc = run_module("dit_jax.sample", "--workdir", workdir, "--num_samples", 2, "--cfg_scale", "nan",
                    "--output", tmp_path / "s.npz", ok=False)
  assert "--cfg_scale=nan is not a finite number" in proc.stderr
  assert not (tmp_path / "s.npz").exists()


def test_api_refuses_non_finite_scales_and_samples(trained_like):
  workdir, _, _ = trained_like
  config, params = checkpoint.restore_ema_params(str(workdir))
  with pytest.raises(ValueError, match="--cfg_scale=inf is not a finite number"):
    sample.generate_images(config, params, [0, 1], num_steps=2, cfg_scale=float("inf"))
  with pytest.raises(ValueError, match="--cfg_scale=nan is not a finite number"):
    sample.sample_to_files(str(workdir), num_samples=2, cfg_scale=float("nan"))
  # Weights that overflow to NaN used to give all-black uint8 images without a word.
  leaves, treedef = jax.tree.flatten(params)
  nan_params = jax.tree.unflatten(treedef, [leaves[0] * np.nan] + leaves[1:])
  with pytest.raises(sample.NonFiniteSamplesError,
                     match=r"samples \[0, 1, 2\] \(3 of the batch of samples 0..2\) came out NaN"):
    sample.generate_images(config, nan_params, [0, 1, 2], num_steps=2, batch_size=8)


BAD_REQUESTS = [  # (sample_to_files arguments, the message); {file} is a file, {dir} a directory
    (dict(num_samples=0), "--num_samples=0: ask for at least 1 sample"),
    (dict(num_samples=-5), "--num_samples=-5: ask for at least 1 sample"),
    (dict(grid="{dir}/g.png", grid_cols=0), "--grid_cols=0: the grid needs at least 1 column"),
    (dict(num_steps=0), "--num_sampling_steps=0: a sampler needs at least 1 step"),
    (dict(num_steps=-1), "--num_sampling_steps=-1: a sampler needs at least 1 step"),
    (dict(batch_size=0), "--batch_size=0: give a positive multiple of the device count"),
    (dict(labels=["3", "cat"]), "--labels 3,cat: class labels are integers"),
    (dict(output="{file}/s.npz"), "--output {file}/s.npz: cannot create the directory {file}"),
    (dict(output="{dir}"), "--output {dir} is a directory"),
    (dict(grid="{file}/sub/g.png"), "--grid {file}/sub/g.png: cannot create the directory"),
    (dict(grid="{dir}/g.txt"), "--grid {dir}/g.txt: pillow cannot write .txt images"),
    (dict(png_dir="{file}"), "--png_dir {file} is a file, not a directory"),
]


@pytest.mark.parametrize("kwargs,message", BAD_REQUESTS)
def test_bad_requests_are_refused_before_restoring(tmp_path, kwargs, message):
  (tmp_path / "file").write_text("x")
  (tmp_path / "dir").mkdir()
  where = dict(file=tmp_path / "file", dir=tmp_path / "dir")
  kwargs = {k: v.format(**where) if isinstance(v, str) else v for k, v in kwargs.items()}
  kwargs = dict(dict(num_samples=2), **kwargs)
  # No checkpoint exists: an error about the request proves it came before the restore.
  with pytest.raises(ValueError) as err:
    sample.sample_to_files(str(tmp_path / "no_checkpoint"), **kwargs)
  assert message.format(**where) in str(err.value)


def test_missing_output_directories_are_made_and_bad_defaults_refused(tmp_path):
  sample.check_request(num_samples=1, output=str(tmp_path / "a" / "b" / "s.npz"),
                       png_dir=str(tmp_path / "c" / "png"))
  assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "c" / "png").is_dir()
  # 0 steps (from the caller or the config) used to become 250 silently.
  config = ml_collections.ConfigDict(dict(sample=dict(num_sampling_steps=0)))
  with pytest.raises(ValueError, match="--num_sampling_steps=0"):
    sample.generate_images(config, None, [0])


@pytest.mark.parametrize("flags,message", [
    (["--num_sampling_steps", "0"], "--num_sampling_steps=0: a sampler needs at least 1 step"),
    (["--grid", "{file}/g.png"], "--grid {file}/g.png: cannot create the directory {file}"),
])
def test_cli_refuses_bad_flags_before_restoring(tmp_path, flags, message):
  (tmp_path / "file").write_text("x")
  flags = [f.format(file=tmp_path / "file") for f in flags]
  proc = run_module("dit_jax.sample", "--workdir", tmp_path / "no_checkpoint", "--output",
                    tmp_path / "s.npz", *flags, ok=False)
  assert message.format(file=tmp_path / "file") in proc.stderr
  assert "no complete checkpoint" not in proc.stderr


def test_npz_writer_removes_an_incomplete_file(tmp_path):
  with pytest.raises(RuntimeError, match="interrupted"):
    with sample_outputs.NpzWriter(str(tmp_path / "a.npz"), (4, 2, 2, 1), np.arange(4)) as writer:
      writer.write(np.zeros((2, 2, 2, 1), np.uint8))
      raise RuntimeError("interrupted")
  assert not (tmp_path / "a.npz").exists()


# ---------------------------------------------------------------- official weights


def official_pos_embed(dim, grid):
  """The official get_2d_sincos_pos_embed (numpy, float64): first half columns, second rows."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
  return np.concatenate([one_d(dim // 2, w), one_d(dim // 2, h)], axis=1)[None]


def official_state_dict(depth, dim, channels, patch, classes, tokens, rng):
  """Random weights under the official key names and (out, in) shapes (DIT-FACTS.md)."""
  def w(*shape):
    return torch.tensor(rng.normal(0, 0.05, shape), dtype=torch.float32)
  sd = {"pos_embed": torch.tensor(official_pos_embed(dim, int(math.isqrt(tokens))), dtype=torch.float32),
        "x_embedder.proj.weight": w(dim, channels, patch, patch), "x_embedder.proj.bias": w(dim),
        "t_embedder.mlp.0.weight": w(dim, 256), "t_embedder.mlp.0.bias": w(dim),
        "t_embedder.mlp.2.weight": w(dim, dim), "t_embedder.mlp.2.bias": w(dim),
        "y_embedder.embedding_table.weight": w(classes + 1, dim),
        "final_layer.linear.weight": w(patch * patch * 2 * channels, dim),
        "final_layer.linear.bias": w(patch * patch * 2 * channels),
        "final_layer.adaLN_modulation.1.weight": w(2 * dim, dim),
        "final_layer.adaLN_modulation.1.bias": w(2 * dim)}
  for i in range(depth):
    for name, (out, inp) in {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
                             "mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim),
                             "adaLN_modulation.1": (6 * dim, dim)}.items():
      sd[f"blocks.{i}.{name}.weight"] = w(out, inp)
      sd[f"blocks.{i}.{name}.bias"] = w(out)
  return sd


TINY_CONFIG = '''
import importlib.util
spec = importlib.util.spec_from_file_location("imagenet", {path!r})
imagenet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(imagenet)

def get_config(arg):
  return imagenet.get_config(arg + ",smoke")
'''

TINY_VAE = dict(
    _class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4,
    block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=32,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    act_fn="silu", scaling_factor=0.18215)


def test_converted_official_checkpoint_samples(tmp_path):
  from dit_jax.models import vae, vae_weights
  smoke = load_config("imagenet", "smoke").model
  dim, depth, patch, size = smoke.hidden_size, smoke.depth, smoke.patch_size, smoke.input_size
  sd = official_state_dict(depth, dim, 4, patch, smoke.num_classes, (size // patch) ** 2,
                           np.random.default_rng(0))
  torch.save(sd, tmp_path / "official.pt")
  (tmp_path / "tiny.py").write_text(TINY_CONFIG.format(path=str(ROOT / "configs" / "imagenet.py")))
  convert.main(["--official", str(tmp_path / "official.pt"), "--output", str(tmp_path / "run"),
                "--config", str(tmp_path / "tiny.py")])
  model = vae.AutoencoderKL.from_diffusers_config(TINY_VAE)
  params = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))["params"])
  vae_weights.save_vae(str(tmp_path / "vae"), TINY_VAE, params)

  # What the command runs, in-process (the one-device test runs the command as a subprocess).
  sample.sample_to_files(
      str(tmp_path / "run"), vae_dir=str(tmp_path / "vae"), num_samples=3, num_steps=2,
      cfg_scale=4.0, labels=["1", "7"], output=str(tmp_path / "s.npz"), grid=str(tmp_path / "g.png"))
  with np.load(tmp_path / "s.npz") as npz:
    assert npz["arr_0"].shape == (3, 64, 64, 3) and npz["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(npz["labels"], [1, 7, 1])
  assert (tmp_path / "g.png").exists()
  assert checkpoint.restore_config(str(tmp_path / "run")).model.hidden_size == dim
