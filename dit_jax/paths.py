"""Output paths of the command lines, checked (and their directories made) before any work.

A sampling or benchmark run that fails at its very end because ``--output`` names a missing or
read-only directory loses all its work; the commands call these first. Each raises a ValueError
that names the flag, the path and what is wrong with it.
"""
import os


def _make_dir(directory: str, flag: str, path: str) -> None:
  existing = directory
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"{flag} {path}: cannot create the directory {directory}: {existing} is a "
                     "file; choose a path under a directory.")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise ValueError(f"{flag} {path}: cannot create the directory {directory} ({e.strerror}); "
                     "choose a path under a writable directory.") from e
  if not os.access(directory, os.W_OK | os.X_OK):
    raise ValueError(f"{flag} {path}: the directory {directory} is not writable; "
                     "choose a path under a writable directory.")


def prepare_output_file(path: str, flag: str) -> None:
  """Checks that the file ``path`` can be written, creating its missing parent directories."""
  if os.path.isdir(path):
    raise ValueError(f"{flag} {path} is a directory; give a file name inside it instead.")
  _make_dir(os.path.dirname(os.path.abspath(path)), flag, path)


def prepare_output_dir(path: str, flag: str) -> None:
  """Checks that files can be written into the directory ``path``, creating it if missing."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag} {path} is a file, not a directory; give a directory name.")
  _make_dir(os.path.abspath(path), flag, path)
