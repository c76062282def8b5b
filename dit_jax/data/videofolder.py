"""A directory of class subfolders of videos, cut into fixed-length clips of ADM-cropped frames.

`root/<class name>/**/<video>`, where a video is either a video file (.mp4, .webm, .avi, .mov,
.mkv; decoded with PyAV) or a folder of frame images (PNG/JPEG, ordered by file name). Labels
are the sorted class folder names' indices and videos are sorted, as in imagefolder.py. `root`
may be local or in a bucket (gs://): listing and reading go through etils.epath.

Clips: a clip is `num_frames` frames taken every `frame_stride` frames (spanning
(num_frames - 1) * frame_stride + 1 frames of the video). Clips start every
num_frames * frame_stride frames from frame 0, so they do not overlap and every frame is used
at most once (with stride s > 1, the s - 1 frames after each taken one are not used); a video
shorter than one clip gives none. One example per (video, clip start): the source has random access and
a length fixed by the frame counts, which the index reads once (from the container header when
it has one, else by decoding the video). Every frame is resized and center-cropped as
imagefolder does for images; a clip is dict(x=float32 (F, S, S, 3) in [-1, 1], y=int32).

Reading a clip of a video file decodes from its start up to the clip's last frame (frame-exact
seeking is not reliable across codecs and containers); frame folders are read frame by frame.

Config: data.data_dir (and data.split), data.image_size, data.num_frames (default 8),
data.frame_stride (default 1).
"""
import concurrent.futures
import logging
from typing import Any

import numpy as np
from PIL import Image

from dit_jax.data import sources, transforms

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
_INDEX_THREADS = 16  # frame counting opens every video: overlap the (bucket) round trips


def root_from_config(data_cfg: Any) -> str:
  """`data.data_dir`, joined with `data.split` when set."""
  data_dir = sources.field(data_cfg, "data_dir", "")
  if not data_dir:
    raise ValueError("config.data.data_dir must name the video folder for source='videofolder'.")
  split = sources.field(data_cfg, "split", "")
  return str(sources.as_path(data_dir) / split) if split else data_dir


def check_root(data_cfg: Any) -> None:
  """DataDirError unless the video folder (`data.data_dir`[/split]) is a directory with class
  subfolders. Lists the root only: no video is opened."""
  root, data_dir = root_from_config(data_cfg), sources.field(data_cfg, "data_dir", "")
  where = "there" if root == data_dir else f"at {root} (data_dir / config.data.split)"
  path = sources.as_path(root)
  if not path.is_dir():
    raise sources.DataDirError(data_dir, f"no video folder {where}: not a directory.")
  if not any(e.is_dir() for e in path.iterdir()):
    raise sources.DataDirError(data_dir, f"no class subfolders in the video folder {where} (expected "
                                         f"<class>/<video file {VIDEO_EXTENSIONS} or folder of frames>).")


def _frame_files(folder) -> list[str]:
  """Frame image names directly in `folder`, sorted by name."""
  return sorted(e.name for e in folder.iterdir() if e.name.lower().endswith(FRAME_EXTENSIONS))


def _videos(folder) -> list[str]:
  """Videos under `folder` (any depth), relative to it: video files, and folders that hold
  frame images directly (a folder without any is searched further)."""
  videos = []
  for entry in folder.iterdir():
    if entry.name.lower().endswith(VIDEO_EXTENSIONS):
      videos.append(entry.name)
    elif entry.is_dir():
      videos += [entry.name] if _frame_files(entry) else [f"{entry.name}/{v}" for v in _videos(entry)]
  return videos


def _is_video_file(path: str) -> bool:
  return path.lower().endswith(VIDEO_EXTENSIONS)


def _import_av():
  try:
    import av  # pylint: disable=g-import-not-at-top  # only video files need PyAV
  except ImportError as e:
    raise ImportError("source='videofolder' decodes video files with PyAV: pip install av (or "
                      "dit_jax[video]); folders of frame images need none.") from e
  return av


def count_frames(path: str) -> int:
  """Frames in a video file or frame folder. Video files: the stream's frame count from the
  container header (mp4, mov, avi have it), else (webm, some mkv) counted by decoding."""
  if not _is_video_file(path):
    return len(_frame_files(sources.as_path(path)))
  with sources.as_path(path).open("rb") as f, _import_av().open(f) as container:
    stream = container.streams.video[0]
    if stream.frames > 0:
      return stream.frames
    return sum(1 for _ in container.decode(stream))


def clip_frames(start: int, num_frames: int, frame_stride: int) -> np.ndarray:
  """Frame indices of the clip starting at `start`."""
  return start + frame_stride * np.arange(num_frames)


def clip_starts(total: int, num_frames: int, frame_stride: int) -> np.ndarray:
  """Starts of the non-overlapping clips of a `total`-frame video: 0, F*s, 2*F*s, ... while the
  clip's last frame start + (F-1)*s exists."""
  span = (num_frames - 1) * frame_stride + 1
  return np.arange(0, max(total - span + 1, 0), num_frames * frame_stride)


def read_frames(path: str, indices: np.ndarray, image_size: int) -> np.ndarray:
  """Decodes frames `indices` (increasing) of a video file or frame folder and center-crops
  them -> uint8 (len(indices), image_size, image_size, 3). OSError if the video is shorter."""
  frames = []
  if _is_video_file(path):
    wanted = set(int(i) for i in indices)
    with sources.as_path(path).open("rb") as f, _import_av().open(f) as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
          frames.append(transforms.center_crop_arr(frame.to_image(), image_size))
        if len(frames) == len(indices):
          break
  else:
    folder = sources.as_path(path)
    names = _frame_files(folder)
    for i in indices:
      if i >= len(names):
        break
      with (folder / names[i]).open("rb") as f, Image.open(f) as img:
        frames.append(transforms.center_crop_arr(img.convert("RGB"), image_size))
  if len(frames) < len(indices):
    raise OSError(f"{path} has {len(frames)} of the frames {indices.tolist()} (it is shorter than "
                  "its index says: truncated or changed since).")
  return np.stack(frames)


def _count_or_unreadable(path: str) -> int:
  """count_frames, or -1 (logged) for a video that cannot be opened."""
  try:
    return count_frames(path)
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # decoders raise many kinds
    logging.warning("videofolder: leaving out %s, whose frames cannot be counted: %s: %s",
                    path, type(e).__name__, e)
    return -1


class VideoFolderSource(sources.SkippingSource):
  """Clips of decoded, center-cropped frames in [-1, 1] with their class index.

  Videos whose frames cannot be counted are left out of the index (listed in `unreadable`);
  clips that fail to decode later are skipped and counted by SkippingSource.
  """

  def __init__(self, root: str, image_size: int, num_frames: int, frame_stride: int = 1):
    if num_frames < 1 or frame_stride < 1:
      raise ValueError(f"videofolder needs num_frames >= 1 and frame_stride >= 1 "
                       f"(config.data.num_frames={num_frames}, config.data.frame_stride={frame_stride}).")
    self.root, self.image_size = root, image_size
    self.num_frames, self.frame_stride = num_frames, frame_stride
    root_path = sources.as_path(root)
    class_dirs = sorted((e for e in root_path.iterdir() if e.is_dir()), key=lambda p: p.name)
    self.classes = [d.name for d in class_dirs]
    videos, labels = [], []
    for label, class_dir in enumerate(class_dirs):
      found = sorted(_videos(class_dir), key=lambda v: v.rpartition("/")[::2])
      videos += [f"{class_dir.name}/{v}" for v in found]
      labels += [label] * len(found)
    with concurrent.futures.ThreadPoolExecutor(_INDEX_THREADS) as pool:
      counts = list(pool.map(_count_or_unreadable, [str(root_path / v) for v in videos]))
    self.unreadable = [v for v, n in zip(videos, counts) if n < 0]
    starts = [clip_starts(n, num_frames, frame_stride) for n in counts]
    self._videos = np.array(videos, dtype=np.bytes_)
    self._labels = np.array(labels, np.int32)
    self._clip_video = np.repeat(np.arange(len(videos), dtype=np.int32), [len(s) for s in starts])
    self._clip_start = np.concatenate([np.zeros(0, np.int64), *starts]).astype(np.int32)
    if not len(self._clip_start):
      raise ValueError(
          f"video folder {root} has no clips of {num_frames} frames at stride {frame_stride} "
          f"({len(class_dirs)} class subfolders, {len(videos)} videos ({VIDEO_EXTENSIONS} files or "
          f"folders of {FRAME_EXTENSIONS} frames), {len(self.unreadable)} unreadable, longest "
          f"{max(counts, default=0)} frames; a clip spans {(num_frames - 1) * frame_stride + 1}).")

  @classmethod
  def from_config(cls, data_cfg: Any) -> "VideoFolderSource":
    image_size = sources.field(data_cfg, "image_size", 0)
    if image_size <= 0:
      raise ValueError("config.data.image_size must be set for source='videofolder' (e.g. 256).")
    check_root(data_cfg)
    return cls(root_from_config(data_cfg), image_size, sources.num_frames(data_cfg),
               sources.field(data_cfg, "frame_stride", 1))

  def __len__(self) -> int:
    return len(self._clip_start)

  def clip(self, index: int) -> tuple[str, np.ndarray]:
    """(path of the video, frame indices) of example `index`."""
    path = str(sources.as_path(self.root) / self._videos[self._clip_video[index]].decode())
    return path, clip_frames(int(self._clip_start[index]), self.num_frames, self.frame_stride)

  def read(self, index: int) -> dict:
    path, frames = self.clip(index)
    try:
      arr = read_frames(path, frames, self.image_size)
    except Exception as e:  # pylint: disable=broad-except  # decoders raise many kinds
      raise OSError(f"cannot read frames {frames.tolist()} of {path}: {type(e).__name__}: {e}") from e
    return dict(x=transforms.uint8_to_unit(arr), y=self._labels[self._clip_video[index]])

  def __repr__(self) -> str:
    return (f"VideoFolderSource(root={self.root!r}, image_size={self.image_size}, "
            f"num_frames={self.num_frames}, frame_stride={self.frame_stride})")
