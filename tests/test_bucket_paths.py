"""Checks data read from and written to bucket paths, without any network.

`testing.local_bucket` serves gs://BUCKET/PATH from a local directory through fsspec, the file
layer etils.epath uses for gs:// when TensorFlow's is off; the data code makes the same epath
calls as on a real bucket.
- imagefolder at gs://bucket/images: the same classes, files (in torchvision's order: sorted
  os.walk, as its make_dataset lists them) and batches, pixel for pixel, as the local copy.
- precompute_latents --output gs://bucket/latents: meta.json, shards and markers land in the
  bucket (ArrayRecord's writer writes local files only: each shard is staged and copied), the
  records equal a locally written cache's, and a rerun finds the markers and encodes nothing.
- The cache's meta.json and markers are read from gs:// (input shape, config check). Its shards
  are opened by ArrayRecord's C++ reader (local files, and gs:// objects through Google Cloud's
  client, which no test can serve): a shard it cannot open (s3://, a deleted local shard) is an
  error naming the cache and the shard.
- The config check refuses a data_dir it cannot open, naming it and what it looked for.
"""
import os

import fsspec
import numpy as np
import pytest

from configs import imagenet
from dit_jax import config_checks, data
from dit_jax.data import imagefolder, latents, precompute_latents, sources, testing

SIZE = 16


def _batches(cfg, n=2):
  it = iter(data.create_dataset(cfg, global_batch_size=4, seed=3, process_index=0, process_count=1))
  batches = [next(it) for _ in range(n)]
  it.close()  # no prefetching after the bucket is gone
  return batches


def _torchvision_order(root):
  """Relative image paths as torchvision's make_dataset lists them (sorted classes, sorted os.walk)."""
  out = []
  for cls in sorted(e.name for e in os.scandir(root) if e.is_dir()):
    for dirpath, _, filenames in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
      out += [os.path.relpath(os.path.join(dirpath, f), root) for f in sorted(filenames)
              if f.lower().endswith(imagefolder.IMAGE_EXTENSIONS)]
  return out


def test_imagefolder_from_a_bucket_equals_the_local_folder(tmp_path):
  train = tmp_path / "bucket" / "images" / "train"
  testing.make_image_folder(str(train), per_class=3, corrupt=1)
  for sub in ("b", "a-1", "a"):  # nested folders, walked in torchvision's order
    testing.make_image_folder(str(train / "class_1" / sub), num_classes=1, per_class=1, seed=len(sub))
  (train / "class_0" / "notes.txt").write_text("not an image")
  local = dict(source="imagefolder", data_dir=str(tmp_path / "bucket" / "images"), split="train",
               image_size=SIZE, flip=True)
  with testing.local_bucket(str(tmp_path)):
    remote = dict(local, data_dir="gs://bucket/images")
    source = imagefolder.ImageFolderSource.from_config(remote)
    remote_paths = [source.path(i) for i in range(len(source))]
    remote_batches = _batches(remote)
  assert remote_paths == [f"gs://bucket/images/train/{p}" for p in _torchvision_order(str(train))]
  assert len(remote_paths) == 10 and source.classes == ["class_0", "class_1"]
  for got, want in zip(remote_batches, _batches(local)):
    for key in ("x", "y", "skipped"):
      np.testing.assert_array_equal(got[key], want[key])
  assert sum(b["skipped"].sum() for b in remote_batches) >= 1  # the corrupt file, read from gs://


def _precompute(data_dir, output, vae_dir):
  return precompute_latents.precompute(precompute_latents.parse_args([
      "--source", "imagefolder", "--data_dir", data_dir, "--image_size", str(SIZE), "--vae", vae_dir,
      "--output", output, "--num_shards", "2", "--batch_size", "4", "--num_threads", "2"]))


def _records(cache_dir):
  meta, paths = latents.open_cache(cache_dir)
  from array_record.python.array_record_module import ArrayRecordReader
  out = []
  for path in paths:
    reader = ArrayRecordReader(path)
    out.append(reader.read_all())
    reader.close()
  return meta, out


def test_latent_cache_written_to_and_read_from_a_bucket(tmp_path):
  folder = testing.make_image_folder(str(tmp_path / "bucket" / "images"), per_class=4)
  vae_dir = testing.make_vae_dir(str(tmp_path / "vae"))
  mirror = str(tmp_path / "bucket" / "latents")  # where gs://bucket/latents lands
  cfg = dict(source="latents", data_dir="gs://bucket/latents")
  with testing.local_bucket(str(tmp_path), protocols=("gs", "s3")):
    summary = _precompute("gs://bucket/images", "gs://bucket/latents", vae_dir)
    assert (summary["images"], summary["shards_done"], summary["shards_encoded_now"]) == (8, 2, 2)
    assert _precompute("gs://bucket/images", "gs://bucket/latents", vae_dir)["shards_encoded_now"] == 0
    assert data.input_shape(cfg) == (SIZE // 2, SIZE // 2, 4)  # meta.json read from gs://
    sources.check_data_dir(cfg)
    # ArrayRecord's data source opens the shards on parallel threads: either may be named.
    with pytest.raises(sources.DataDirError, match=(
        r"s3://bucket/latents: ArrayRecord's reader cannot open a shard \(open\(\) failed: No such "
        r"file or directory; opening s3://bucket/latents/latents-0000[01]-of-00002\.array_record\); "
        r"it reads local files and gs:// objects only")):
      latents.LatentsSource("s3://bucket/latents")
  assert sorted(os.listdir(mirror)) == sorted(
      [latents.META_FILE] + [latents.SHARD_PATTERN.format(s, 2) + suffix
                             for s in range(2) for suffix in ("", latents.DONE_SUFFIX)])
  _precompute(folder, str(tmp_path / "local"), vae_dir)
  (remote_meta, remote), (local_meta, local) = _records(mirror), _records(str(tmp_path / "local"))
  assert remote == local and sum(map(len, local)) == 8
  assert {k: remote_meta[k] for k in ("latent_shape", "num_shards", "num_source_examples")} == \
      {k: local_meta[k] for k in ("latent_shape", "num_shards", "num_source_examples")}
  os.remove(latents.shard_path(mirror, 1, 2))  # a lost shard
  with pytest.raises(sources.DataDirError, match=r"cannot open a shard .*latents-00001-of-00002"):
    latents.LatentsSource(mirror)
  os.remove(latents.shard_path(mirror, 1, 2) + latents.DONE_SUFFIX)
  config = imagenet.get_config("smoke")
  config.data.data_dir = "gs://bucket/latents"
  with testing.local_bucket(str(tmp_path)), pytest.raises(config_checks.ConfigError, match=(
      r"config\.data\.data_dir=gs://bucket/latents: the latent cache is incomplete \(1 of 2 shards "
      r"unfinished: no marker gs://bucket/latents/latents-00001-of-00002\.array_record\.json\)")):
    config_checks.validate(config, num_devices=8)


@pytest.mark.parametrize("arg, data_dir, split, message", [
    ("smoke", "gs://bucket/nothing", None,
     "config.data.data_dir=gs://bucket/nothing: no latent cache there (meta.json missing)"),
    ("smoke", "LOCAL/nope", None, "config.data.data_dir=LOCAL/nope: no latent cache there"),
    ("smoke,source=imagefolder", "gs://bucket/none", "train",
     "config.data.data_dir=gs://bucket/none: no image folder at gs://bucket/none/train"),
    ("smoke,source=imagefolder", "gs://bucket/none", "",
     "config.data.data_dir=gs://bucket/none: no image folder there: not a directory"),
    ("smoke,source=tfds", "gs://bucket/tfds", "train",
     "config.data.data_dir=gs://bucket/tfds: TFDS dataset 'imagenet2012' split 'train' is not "
     "prepared there as array_record"),
    ("smoke", "memory://cache", None,
     "config.data.data_dir=memory://cache: no file layer for this scheme"),
])
def test_config_check_refuses_a_data_dir_it_cannot_open(tmp_path, arg, data_dir, split, message):
  config = imagenet.get_config(arg)
  config.data.data_dir = data_dir.replace("LOCAL", str(tmp_path))
  if split is not None:
    config.data.split = split
  with testing.local_bucket(str(tmp_path)), pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate(config, num_devices=8)
  assert message.replace("LOCAL", str(tmp_path)) in str(error.value)


def test_local_bucket_restores_the_file_layer(tmp_path):
  (tmp_path / "b").mkdir()
  registry, env = dict(fsspec.registry), os.environ.get("EPATH_USE_TF")
  with testing.local_bucket(str(tmp_path)):
    assert sources.as_path("gs://b").is_dir() and not sources.as_path("gs://c").exists()
  assert dict(fsspec.registry) == registry and os.environ.get("EPATH_USE_TF") == env
