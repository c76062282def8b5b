"""Reads the images of an ADM-format npz (``arr_0``: uint8 N x H x W x C) a slice at a time.

``np.load`` of an npz reads a whole member into memory: 50,000 samples at 512 px are 39 GB. For
the uncompressed members that ``np.savez``, ``dit_jax.sample`` and ADM's tools write, the array's
bytes lie contiguously in the file, so this reader memory-maps them and a host reads only the rows
it asks for. Compressed members (``np.savez_compressed``) are read whole, with a warning.
"""
import logging
import os
import struct
import zipfile

import numpy as np

IMAGES_KEY = "arr_0"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _member_offset(path: str, info: zipfile.ZipInfo) -> int:
  """Byte offset of a stored member's data: after its local header, name and extra field."""
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    header = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
  name_len, extra_len = header[-2], header[-1]
  return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


class NpzImages:
  """``shape``, ``dtype``, ``read(start, stop)`` and ``keys`` of an npz holding ``arr_0``.

  Raises ValueError naming the file when it is not an npz, has no ``arr_0``, or ``arr_0`` is
  not an array; the caller checks dtype and shape (``features.check_images``).
  """

  def __init__(self, path: str):
    self.name = path
    try:
      self._zip = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"{path} is not a readable npz file ({e}).") from e
    self.keys = sorted(n[:-len(".npy")] for n in self._zip.namelist() if n.endswith(".npy"))
    if IMAGES_KEY not in self.keys:
      raise ValueError(f"{path} has no images ('{IMAGES_KEY}'); its arrays are {self.keys}.")
    info = self._zip.getinfo(IMAGES_KEY + ".npy")
    try:
      with self._zip.open(info) as member:
        read_header = _HEADER_READERS[np.lib.format.read_magic(member)]
        self.shape, fortran, self.dtype = read_header(member)
        header_len = member.tell()
    except (ValueError, KeyError) as e:
      raise ValueError(f"{path}: '{IMAGES_KEY}' is not a numpy array ({e}).") from e
    if fortran:
      raise ValueError(f"{path}: '{IMAGES_KEY}' is stored in Fortran order; save it C-ordered.")
    self._array = None
    expected = header_len + int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
    if info.compress_type == zipfile.ZIP_STORED and info.file_size >= expected:
      offset = _member_offset(path, info) + header_len
      if offset + expected - header_len > os.path.getsize(path):
        raise ValueError(f"{path} is truncated: '{IMAGES_KEY}' needs {expected} bytes.")
      self._array = np.memmap(path, self.dtype, "r", offset, self.shape)
    elif info.compress_type != zipfile.ZIP_STORED:
      logging.warning("%s is compressed: reading all of '%s' into memory (save with np.savez, "
                      "not savez_compressed, to stream it).", path, IMAGES_KEY)
    else:
      raise ValueError(f"{path} is truncated: '{IMAGES_KEY}' needs {expected} bytes.")

  def read(self, start: int, stop: int) -> np.ndarray:
    if self._array is None:
      self._array = np.load(self.name)[IMAGES_KEY]
    return np.asarray(self._array[start:stop])

  def __len__(self) -> int:
    return self.shape[0]
