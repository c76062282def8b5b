"""Sample grids for people to look at: image grids, video frame strips and animated GIFs.

Inputs are uint8 samples as ``dit_jax.sample`` produces them: images (N, H, W, C), videos
(N, F, H, W, C). Small samples (8x8 digits, 16x16 moving digits) are enlarged by an integer
factor (nearest neighbour) so that a grid is legible.
"""
import math

import einops
import numpy as np

GRID_MIN_CELL_PX = 32  # cells smaller than this are enlarged
GIF_FRAME_MS = 125  # 8 frames per second


def make_grid(images: np.ndarray, ncols: int = 10, pad: int = 2) -> np.ndarray:
  """uint8 (N, H, W, C) -> one (rows, cols) image with ``pad`` pixels of black between cells.

  Images smaller than GRID_MIN_CELL_PX are enlarged by an integer factor (nearest neighbour).
  """
  n, h, w, _ = images.shape
  scale = max(1, math.ceil(GRID_MIN_CELL_PX / max(h, w)))
  images = einops.repeat(images, "n h w c -> n (h sh) (w sw) c", sh=scale, sw=scale)
  ncols = min(ncols, n)
  nrows = math.ceil(n / ncols)
  # Black cells fill the last row; each cell gets its top and left border, the grid its last.
  cells = np.pad(images, ((0, nrows * ncols - n), (pad, 0), (pad, 0), (0, 0)))
  grid = einops.rearrange(cells, "(r k) h w c -> (r h) (k w) c", k=ncols)
  return np.pad(grid, ((0, pad), (0, pad), (0, 0)))


def frame_strips(videos: np.ndarray, pad: int = 2) -> np.ndarray:
  """uint8 (N, F, H, W, C) -> one image with a row per video and its F frames left to right."""
  return make_grid(einops.rearrange(videos, "n f h w c -> (n f) h w c"), videos.shape[1], pad)


def animated_grid(videos: np.ndarray, ncols: int = 10, pad: int = 2) -> np.ndarray:
  """uint8 (N, F, H, W, C) -> (F, height, width, C): frame t is the grid of every video's frame t
  (``make_grid``'s layout), so played in order each cell is one video."""
  return np.stack([make_grid(videos[:, t], ncols, pad) for t in range(videos.shape[1])])


def save_png(image: np.ndarray, path) -> None:
  """Writes a uint8 (H, W, C) image (C = 1 or 3) as PNG to a path or binary file."""
  from PIL import Image  # local: only outputs need pillow
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")


def save_gif(frames: np.ndarray, path, frame_ms: int = GIF_FRAME_MS) -> None:
  """Writes uint8 (F, H, W, C) frames as an endlessly looping animated GIF to a path or binary
  file (grayscale stays grayscale; colour is quantized to GIF's 256-colour palettes)."""
  from PIL import Image  # local: only outputs need pillow
  pictures = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
  pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:],
                   duration=frame_ms, loop=0)
