"""Per-example image preprocessing, exactly as DiT's reference training script does it.

The reference (ADM / DiT `center_crop_arr`) halves the image with a BOX filter while its short
side is at least twice the target, resizes with BICUBIC so the short side equals the target,
then center-crops; training flips horizontally with probability 1/2 and scales to [-1, 1]
(videos: all frames of a clip flipped together).
"""
import numpy as np
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
  """ADM center crop: BOX halving, BICUBIC resize of the short side, center crop.

  Args:
    pil_image: an RGB (or L) PIL image of any size.
    image_size: the output side length.

  Returns:
    uint8 array (image_size, image_size, C) with C = 3 for RGB, 1 for L.
  """
  while min(*pil_image.size) >= 2 * image_size:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = image_size / min(*pil_image.size)
  pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
  arr = np.array(pil_image)
  if arr.ndim == 2:
    arr = arr[:, :, None]
  crop_y = (arr.shape[0] - image_size) // 2
  crop_x = (arr.shape[1] - image_size) // 2
  return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def uint8_to_unit(arr: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to float32 [-1, 1] as ToTensor + Normalize(0.5, 0.5) do (same rounding)."""
  return (arr.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)


def maybe_flip(x: np.ndarray, rng: np.random.Generator, flip: bool) -> np.ndarray:
  """Flips horizontally (axis -2, W) with probability 1/2 when `flip` is on: an HWC image, or
  every frame of an FHWC video alike (one draw per video, frame order kept)."""
  if flip and rng.random() < 0.5:
    return x[..., ::-1, :]
  return x
