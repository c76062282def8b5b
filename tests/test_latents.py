"""Checks the latent cache round trip: image folder -> tiny VAE -> ArrayRecord shards -> batches.

- Every record holds the Flax VAE's posterior (mean, logvar) of the ADM-cropped image and of its
  horizontal flip (recomputed here directly from the files), plus the folder's label.
- Corrupt files are skipped and counted; rerunning skips finished shards (resume).
- Batches: with a near-deterministic posterior, x is 0.18215 x the mean of the image or of its
  flip, and both occur; for hand-written records with flip off, (x / scale - mean) / exp(logvar / 2)
  is standard normal (closed-form check of the posterior sampling).
"""
import os

import jax
import numpy as np
import pytest

from dit_jax import data
from dit_jax.data import imagefolder, latents, precompute_latents, testing
from dit_jax.data import transforms
from dit_jax.models import vae, vae_weights

SIZE = 16


def _encode_files(folder, vae_dir):
  model, params = vae_weights.load_vae(vae_dir)
  encode = jax.jit(lambda x: model.apply({"params": params}, x, method=vae.AutoencoderKL.encode))
  source = imagefolder.ImageFolderSource(folder, SIZE)
  out = {}
  for i in range(len(source)):
    if "corrupt" in source.path(i):
      continue
    x = transforms.uint8_to_unit(imagefolder.load_image(source.path(i), SIZE))
    both = np.stack([x, x[:, ::-1]])
    mean, logvar = encode(both)
    out[i] = (int(source.read(i)["y"]), np.asarray(mean), np.asarray(logvar))
  return out


def _build(tmp_path, logvar_bias):
  folder = testing.make_image_folder(str(tmp_path / "images"), per_class=3, corrupt=1)
  vae_dir = testing.make_vae_dir(str(tmp_path / "vae"), logvar_bias=logvar_bias)
  cache = str(tmp_path / "cache")
  args = ["--source", "imagefolder", "--data_dir", folder, "--image_size", str(SIZE), "--vae", vae_dir,
          "--output", cache, "--num_shards", "3", "--batch_size", "2", "--num_threads", "2"]
  return folder, vae_dir, cache, args


def test_cache_contents_skips_and_resume(tmp_path):
  folder, vae_dir, cache, args = _build(tmp_path, 0.0)
  summary = precompute_latents.precompute(precompute_latents.parse_args(args))
  assert (summary["images"], summary["skipped"], summary["shards_done"]) == (6, 1, 3)
  meta = latents.read_meta(cache)
  assert meta["latent_shape"] == [SIZE // 2, SIZE // 2, 4]
  expected = _encode_files(folder, vae_dir)
  records = latents.LatentsSource(cache)
  assert len(records) == 6
  for r in range(len(records)):
    rec = records[r]
    match = [i for i, (y, mean, logvar) in expected.items()
             if y == rec["y"] and np.allclose(rec["moments"][:, 0], mean, atol=1e-5)
             and np.allclose(rec["moments"][:, 1], logvar, atol=1e-5)]
    assert len(match) == 1
  os.remove(latents.shard_path(cache, 1, 3) + latents.DONE_SUFFIX)
  again = precompute_latents.precompute(precompute_latents.parse_args(args))
  assert again["shards_encoded_now"] == 1 and again["images"] == 6
  assert precompute_latents.precompute(precompute_latents.parse_args(args))["shards_encoded_now"] == 0
  with pytest.raises(ValueError, match="other settings"):
    precompute_latents.precompute(precompute_latents.parse_args(args + ["--dtype", "float16"]))


def test_batches_sample_flip_and_posterior(tmp_path):
  folder, vae_dir, cache, args = _build(tmp_path / "sharp", -100.0)
  precompute_latents.main(args)
  cfg = dict(source="latents", data_dir=cache, flip=True)
  assert data.input_shape(cfg) == (SIZE // 2, SIZE // 2, 4)
  expected = _encode_files(folder, vae_dir)
  it = iter(data.create_dataset(cfg, global_batch_size=6, seed=0, process_index=0, process_count=1))
  flips = []
  for _ in range(4):
    batch = next(it)
    assert batch["x"].shape == (6, SIZE // 2, SIZE // 2, 4) and batch["x"].dtype == np.float32
    for x, y in zip(batch["x"], batch["y"]):
      hits = [(f, i) for i, (ey, mean, _) in expected.items() for f in (0, 1)
              if ey == y and np.allclose(x, 0.18215 * mean[f], atol=1e-5)]
      assert hits
      flips.append(hits[0][0])
  assert 0 < np.mean(flips) < 1  # both the image and its flip are used



def test_posterior_sampling_is_standard_normal_noise(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter
  rng = np.random.RandomState(0)
  shape = (2, 2, 4, 4, 3)
  moments = rng.normal(size=(8, *shape)).astype(np.float32)
  moments[:, :, 1] = rng.uniform(-3, 1, size=moments[:, :, 1].shape)  # logvar
  latents.write_meta(str(tmp_path), dict(image_size=32, latent_shape=[4, 4, 3], dtype="float32", num_shards=1))
  path = latents.shard_path(str(tmp_path), 0, 1)
  writer = ArrayRecordWriter(path, "group_size:1")
  for label, m in enumerate(moments):  # the label identifies the record
    writer.write(latents.encode_record(label, m))
  writer.close()
  (tmp_path / (os.path.basename(path) + latents.DONE_SUFFIX)).write_text("{}")
  cfg = dict(source="latents", data_dir=str(tmp_path), flip=False, latent_scale=0.5)
  it = iter(data.create_dataset(cfg, global_batch_size=8, seed=1, process_index=0, process_count=1))
  z = []
  for _ in range(8):
    batch = next(it)
    for x, y in zip(batch["x"], batch["y"]):
      mean, logvar = moments[y, 0]
      z.append((x / 0.5 - mean) / np.exp(0.5 * logvar))
  z = np.concatenate([c.ravel() for c in z])  # 3,072 draws
  assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_tiny_cache_fixture_for_training(tmp_path):
  cfg = testing.make_latent_cache(str(tmp_path), image_size=SIZE, num_images=4)
  batch = next(iter(data.create_dataset(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1)))
  assert batch["x"].shape == (4, *data.input_shape(cfg))
  assert np.isfinite(batch["x"]).all() and jax.numpy.asarray(batch["y"]).dtype == np.int32
