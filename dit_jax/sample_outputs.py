"""What ``python -m dit_jax.sample`` writes: the ADM-format npz (streamed, one batch at a time),
the grid of the first samples (images, video frame strips or an animated GIF) and one PNG / GIF
per sample."""
import math
import os
import zipfile
from typing import Sequence

import numpy as np

from dit_jax import grids


class NpzWriter:
  """Streams uint8 NHWC images into an npz (``arr_0`` and ``labels``, plus ``prompts`` for text
  models), one batch at a time.

  The file is what ``np.savez`` writes (uncompressed members), readable by ADM's evaluator;
  the array header is written first with the final shape, then the raw batches.
  """

  def __init__(self, path: str, shape: tuple[int, ...], labels: np.ndarray,
               prompts: Sequence[str] | None = None):
    self._path = path
    self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
    self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_2_0(self._member, header)
    self._labels = np.asarray(labels)
    self._prompts = None if prompts is None else np.asarray(prompts, str)
    self._remaining = math.prod(shape)

  def write(self, images: np.ndarray) -> None:
    images = np.ascontiguousarray(images, np.uint8)
    self._remaining -= images.size
    if self._remaining < 0:
      raise ValueError("NpzWriter got more images than the shape it was opened with.")
    self._member.write(images.tobytes())

  def close(self) -> None:
    self._member.close()
    if self._remaining:
      self._zip.close()
      raise ValueError(f"NpzWriter closed with {self._remaining} values missing.")
    with self._zip.open("labels.npy", "w") as f:
      np.lib.format.write_array(f, self._labels)
    if self._prompts is not None:
      with self._zip.open("prompts.npy", "w") as f:
        np.lib.format.write_array(f, self._prompts)
    self._zip.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if exc[0] is None:
      self.close()
    else:  # an incomplete npz would pass for samples: remove it
      self._member.close()
      self._zip.close()
      os.remove(self._path)


def write_per_sample(samples: np.ndarray, start: int, png_dir: str | None,
                     gif_dir: str | None) -> None:
  """One PNG per sample into ``png_dir`` (a video's frame strip) and, for videos, one animated
  GIF into ``gif_dir``; files are named by sample index."""
  video = samples.ndim == 5
  for i, sample in enumerate(samples):
    name = f"{start + i:06d}"
    if png_dir:
      grids.save_png(grids.frame_strips(sample[None]) if video else sample,
                     os.path.join(png_dir, name + ".png"))
    if gif_dir and video:
      grids.save_gif(sample, os.path.join(gif_dir, name + ".gif"))


def write_grid(samples: np.ndarray, path: str, ncols: int) -> None:
  """The grid of ``samples``: images in ``ncols`` columns; videos as an animated grid for a .gif
  name, else as frame strips (a row per video)."""
  if samples.ndim == 4:
    grids.save_png(grids.make_grid(samples, ncols), path)
  elif path.lower().endswith(".gif"):
    grids.save_gif(grids.animated_grid(samples, ncols), path)
  else:
    grids.save_png(grids.frame_strips(samples), path)
