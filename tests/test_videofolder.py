"""Checks the real-video source and its per-frame SD-VAE latent cache.

References are independent of the source: frames of known solid colours written with PyAV (mp4,
lossy: a tolerance) or as PNG (exact), clip indices counted by hand, a crop whose result is
known from the band layout, and latents recomputed by encoding each frame file on its own.
"""
import json
import os

import av
import jax
import numpy as np
import pytest
from PIL import Image

from dit_jax import data
from dit_jax.data import latents, precompute_latents, sources, testing, transforms, videofolder
from dit_jax.models import vae, vae_weights

COLORS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50), (10, 20, 30),
                   (255, 255, 255), (0, 0, 0), (128, 128, 128), (30, 200, 90), (90, 30, 200)], np.uint8)
MP4_TOLERANCE = 4 / 127.5  # mpeg4 at qscale 1, yuv420p round trip: a few levels of 255


def _solid(k: int, size=(32, 32)) -> np.ndarray:
  return np.broadcast_to(COLORS[k % len(COLORS)], (*size, 3)).copy()


def _unit(color) -> np.ndarray:
  return (np.asarray(color, np.float32) / 255 - 0.5) / 0.5


def write_video(path: str, frames, codec: str = "mpeg4") -> str:
  """Encodes uint8 HWC frames with PyAV (mpeg4 in .mp4, or vp8 in .webm)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=8)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    stream.options = {"qscale": "1"} if codec == "mpeg4" else {"crf": "4", "b": "2M"}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_frames(folder: str, frames) -> str:
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f"frame_{i:03d}.png"))
  return folder


def test_frame_counts_and_clip_index(tmp_path):
  mp4 = write_video(str(tmp_path / "a" / "ten.mp4"), [_solid(k) for k in range(10)])
  webm = write_video(str(tmp_path / "a" / "seven.webm"), [_solid(k) for k in range(7)], codec="libvpx")
  pngs = write_frames(str(tmp_path / "b" / "nine"), [_solid(k) for k in range(9)])
  with av.open(webm) as container:
    assert container.streams.video[0].frames == 0  # no count in the header: decoding fallback
  assert [videofolder.count_frames(p) for p in (mp4, webm, pngs)] == [10, 7, 9]
  # F=3, stride 1: a clip spans 3 frames, starts every 3 -> 10: 0,3,6; 7: 0,3; 9: 0,3,6.
  src = videofolder.VideoFolderSource(str(tmp_path), image_size=16, num_frames=3)
  clips = [(os.path.relpath(p, tmp_path), f.tolist()) for p, f in map(src.clip, range(len(src)))]
  assert clips == [("a/seven.webm", [0, 1, 2]), ("a/seven.webm", [3, 4, 5]),
                   ("a/ten.mp4", [0, 1, 2]), ("a/ten.mp4", [3, 4, 5]), ("a/ten.mp4", [6, 7, 8]),
                   ("b/nine", [0, 1, 2]), ("b/nine", [3, 4, 5]), ("b/nine", [6, 7, 8])]
  # F=2, stride 3: span 4, starts every 6 -> 10: 0,6; 7: 0; 9: 0.
  src = videofolder.VideoFolderSource(str(tmp_path), image_size=16, num_frames=2, frame_stride=3)
  assert [src.clip(i)[1].tolist() for i in range(len(src))] == [[0, 3], [0, 3], [6, 9], [0, 3]]


def test_decoded_values_labels_and_bucket(tmp_path):
  root = tmp_path / "bucket" / "videos"
  write_video(str(root / "cats" / "v.mp4"), [_solid(k) for k in range(8)])
  write_frames(str(root / "dogs" / "clip_1"), [_solid(k + 2) for k in range(8)])
  cfg = dict(source="videofolder", data_dir=str(root), image_size=16, num_frames=2, frame_stride=2)
  src = sources.make_source(cfg)
  assert isinstance(src, videofolder.VideoFolderSource) and src.classes == ["cats", "dogs"]
  assert len(src) == 4  # per video: starts 0 and 4, frames (0, 2) and (4, 6)
  for i, (first_color, label) in enumerate([(0, 0), (4, 0), (2, 1), (6, 1)]):
    ex = src[i]
    assert ex["x"].shape == (2, 16, 16, 3) and ex["x"].dtype == np.float32
    assert ex["y"] == label and ex["y"].dtype == np.int32 and ex["skipped"] == 0
    want = np.stack([np.broadcast_to(_unit(COLORS[first_color + d]), (16, 16, 3)) for d in (0, 2)])
    if label == 0:  # mp4: lossy
      np.testing.assert_allclose(ex["x"], want, atol=MP4_TOLERANCE)
    else:
      np.testing.assert_array_equal(ex["x"], want)
  with testing.local_bucket(str(tmp_path)):
    remote = sources.make_source(dict(cfg, data_dir="gs://bucket/videos"))
    assert len(remote) == 4
    for i in range(4):
      np.testing.assert_array_equal(remote[i]["x"], src[i]["x"])


def test_resize_and_center_crop(tmp_path):
  bands = np.zeros((32, 64, 3), np.uint8)  # H=32, W=64: red | green (32 columns) | blue
  bands[:, :16] = COLORS[0]
  bands[:, 16:48] = COLORS[1]
  bands[:, 48:] = COLORS[2]
  rng = np.random.RandomState(0)
  noise = rng.randint(0, 256, (40, 24, 3), np.uint8)
  write_frames(str(tmp_path / "c" / "bands"), [bands])
  write_frames(str(tmp_path / "c" / "noise"), [noise])
  src = videofolder.VideoFolderSource(str(tmp_path), image_size=16, num_frames=1)
  # Box halving to 32x16, no resize, centre 16 columns of 32 = the green band only.
  np.testing.assert_array_equal(src[0]["x"], np.broadcast_to(_unit(COLORS[1]), (1, 16, 16, 3)))
  # Same pixels as the image folder source gives the same file (ADM crop of DiT's script).
  want = transforms.uint8_to_unit(transforms.center_crop_arr(Image.fromarray(noise), 16))
  np.testing.assert_array_equal(src[1]["x"][0], want)


def test_unreadable_videos_skipped_and_counted(tmp_path, caplog):
  write_frames(str(tmp_path / "c" / "a_bad"), [_solid(k) for k in range(4)])
  with open(tmp_path / "c" / "a_bad" / "frame_001.png", "wb") as f:
    f.write(b"\x89PNG truncated")
  write_frames(str(tmp_path / "c" / "b_good"), [_solid(k) for k in range(4, 8)])
  (tmp_path / "c" / "garbage.mp4").write_bytes(b"not a video at all" * 10)
  src = videofolder.VideoFolderSource(str(tmp_path), image_size=8, num_frames=2)
  assert src.unreadable == ["c/garbage.mp4"]  # cannot be counted: left out of the index
  assert len(src) == 4
  ex = src[0]  # a_bad frames (0, 1): frame 1 is corrupt -> the next clip, a_bad (2, 3)
  assert ex["skipped"] == 1
  np.testing.assert_array_equal(ex["x"][:, 0, 0], np.stack([_unit(COLORS[2]), _unit(COLORS[3])]))
  assert src[1]["skipped"] == 0
  assert any("frame_001.png" in r.getMessage() for r in caplog.records)


def test_missing_or_empty_folder_errors(tmp_path):
  cfg = dict(source="videofolder", data_dir=str(tmp_path / "nope"), image_size=16, num_frames=2)
  with pytest.raises(sources.DataDirError, match="nope: no video folder there"):
    sources.check_data_dir(cfg)
  (tmp_path / "empty").mkdir()
  with pytest.raises(sources.DataDirError, match="empty: no class subfolders"):
    videofolder.check_root(dict(cfg, data_dir=str(tmp_path / "empty")))
  (tmp_path / "empty" / "cls").mkdir()
  videofolder.check_root(dict(cfg, data_dir=str(tmp_path / "empty")))
  with pytest.raises(ValueError, match=f"video folder {tmp_path / 'empty'} has no clips of 2 frames"):
    sources.make_source(dict(cfg, data_dir=str(tmp_path / "empty")))
  write_frames(str(tmp_path / "empty" / "cls" / "short"), [_solid(0)])
  with pytest.raises(ValueError, match="longest 1 frames; a clip spans 2"):
    sources.make_source(dict(cfg, data_dir=str(tmp_path / "empty")))
  with pytest.raises(ValueError, match="num_frames"):
    sources.make_source(dict(cfg, data_dir=str(tmp_path / "empty"), num_frames=0))


def test_precompute_per_frame_latents(tmp_path):
  rng = np.random.RandomState(0)
  frames = [rng.randint(0, 256, (20, 24, 3), np.uint8) for _ in range(9)]
  folder = write_frames(str(tmp_path / "videos" / "only_class" / "v"), frames)
  vae_dir = testing.make_vae_dir(str(tmp_path / "vae"), logvar_bias=-100.0)
  cache = str(tmp_path / "cache")
  precompute_latents.main(["--source", "videofolder", "--data_dir", str(tmp_path / "videos"),
                           "--num_frames", "4", "--image_size", "16", "--vae", vae_dir,
                           "--output", cache, "--num_shards", "2", "--batch_size", "1",
                           "--num_threads", "2"])
  shape = (4, 8, 8, 4)  # F, then the tiny VAE's downsampling 2 of 16 and its 4 channels
  meta = latents.read_meta(cache)
  assert (meta["latent_shape"], meta["num_frames"], meta["frame_stride"]) == (list(shape), 4, 1)
  assert latents.latent_shape(dict(data_dir=cache)) == shape
  records = latents.LatentsSource(cache)
  assert len(records) == 2  # 9 frames: clips (0..3), (4..7)

  model, params = vae_weights.load_vae(vae_dir)
  encode = jax.jit(lambda x: model.apply({"params": params}, x, method=vae.AutoencoderKL.encode))
  for clip in range(2):
    rec = records[clip]
    assert rec["moments"].shape == (2, 2, *shape) and rec["y"] == 0
    for f in range(4):
      path = os.path.join(folder, f"frame_{4 * clip + f:03d}.png")
      x = transforms.uint8_to_unit(transforms.center_crop_arr(Image.open(path).convert("RGB"), 16))
      mean, logvar = encode(np.stack([x, x[:, ::-1]]))  # the frame alone, and its flip
      np.testing.assert_allclose(rec["moments"][:, 0, f], mean, atol=1e-5)
      np.testing.assert_allclose(rec["moments"][:, 1, f], logvar, atol=1e-5)

  cfg = dict(source="latents", data_dir=cache, flip=True)
  assert data.input_shape(cfg) == shape
  batch = next(iter(data.create_dataset(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1)))
  assert batch["x"].shape == (2, *shape)
  means = [records[c]["moments"][flip, 0] for c in range(2) for flip in range(2)]
  for x in batch["x"]:  # near-deterministic posterior: 0.18215 x the mean of a clip or its flip
    assert any(np.allclose(x, 0.18215 * m, atol=1e-5) for m in means)
  done = [json.loads(sources.as_path(latents.shard_path(cache, s, 2) + latents.DONE_SUFFIX).read_text())
          for s in range(2)]
  assert sum(d["images"] for d in done) == 2 and sum(d["skipped"] for d in done) == 0
