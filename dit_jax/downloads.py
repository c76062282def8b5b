"""Downloads of released weight files into one cache, checked before they are used.

``download(url)`` fetches a file once into ``cache_dir()`` ($DIT_JAX_CACHE, else
~/.cache/dit_jax) and returns its path; later calls reuse the cached copy. The file is streamed
to a temporary name with a progress bar and renamed only once it is complete and its sha256
matches what is expected of it:

- a full sha256 the caller pins (a value published for the file), or
- the hex prefix in the file's name (torch.hub's ``name-<sha256 prefix>.ext`` convention), or
- when neither is known, the sha256 of the first download, recorded beside the file as
  ``<name>.sha256`` (``sha256sum -c`` reads it): trust on first use.

A cached file is checked again against the same value on every use, so a truncated, edited or
replaced file is refused, naming both hashes, instead of being read.
"""
import hashlib
import logging
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request

CACHE_ENV = "DIT_JAX_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/dit_jax"
# torch.hub's naming convention: the hex digits after the name's last '-' start its sha256.
HASH_IN_NAME = re.compile(r"-([0-9a-f]+)\.[^-]*$")
RECORDED_HASH_SUFFIX = ".sha256"
CHUNK = 1 << 20


def cache_dir() -> str:
  """Where downloaded weights (and other caches) live: $DIT_JAX_CACHE, else ~/.cache/dit_jax."""
  return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def file_sha256(path: str | os.PathLike) -> str:
  """The sha256 (hex) of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _fetch(url: str, out, name: str, manual_hint: str) -> str:
  """Streams ``url`` into the open file ``out`` with a progress bar; returns the sha256 (hex)."""
  from tqdm import tqdm  # local: only downloads show a bar
  digest = hashlib.sha256()
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {name}") as bar:
        while chunk := response.read(CHUNK):
          digest.update(chunk)
          out.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, OSError) as err:
    raise OSError(f"Could not download {url} ({err}). {manual_hint}") from err
  if total is not None and received != total:
    raise OSError(f"Download of {url} stopped after {received} of {total} bytes; try again.")
  return digest.hexdigest()


def _expected(name: str, sha256: str | None) -> tuple[str | None, str]:
  """(expected sha256 or its prefix, "where it comes from" ending a sentence before that value)
  for a file called ``name``."""
  if sha256:
    return sha256.lower(), "the published sha256 is"
  match = HASH_IN_NAME.search(name)
  if match:
    return match.group(1), "its name says it starts with"
  return None, ""


def _check_cached(target: pathlib.Path, expected: str | None, source: str) -> None:
  recorded = target.with_name(target.name + RECORDED_HASH_SUFFIX)
  if expected is None and recorded.is_file():
    expected = recorded.read_text().split()[0]
    source = f"the sha256 recorded at its first download ({recorded}) is"
  if expected is None:
    return
  actual = file_sha256(target)
  if not actual.startswith(expected):
    raise ValueError(f"The cached {target} has sha256 {actual}, but {source} {expected}: the file "
                     "was truncated, edited or replaced. Delete it to download it again.")


def download(url: str, directory: str | os.PathLike | None = None, sha256: str | None = None,
             manual_hint: str = "Download it by other means and pass its local path."
             ) -> pathlib.Path:
  """The cached, checked copy of ``url`` in ``directory`` (default ``cache_dir()``).

  ``sha256``: the file's published hash, if any (module docstring: otherwise the name's hash
  prefix, otherwise the first download's hash is recorded). Raises ValueError when the download
  or the cached file does not match (nothing is cached then), OSError when the download fails
  (``manual_hint`` says what else to do).
  """
  directory = pathlib.Path(directory or cache_dir()).expanduser()
  name = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name
  target = directory / name
  expected, source = _expected(name, sha256)
  if target.is_file():
    _check_cached(target, expected, source)
    return target
  directory.mkdir(parents=True, exist_ok=True)
  logging.info("Downloading %s to %s", url, target)
  fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".partial")
  try:
    with os.fdopen(fd, "wb") as out:
      digest = _fetch(url, out, name, manual_hint)
    if expected is not None and not digest.startswith(expected):
      raise ValueError(f"{url}: downloaded file has sha256 {digest}, but {source} {expected}; "
                       "the download is corrupt or the file was replaced. "
                       "Nothing was cached.")
    if expected is None:
      logging.warning("%s has no published sha256; recorded the first download's (%s) in %s%s "
                      "and later uses are checked against it.", url, digest, name,
                      RECORDED_HASH_SUFFIX)
      target.with_name(name + RECORDED_HASH_SUFFIX).write_text(f"{digest}  {name}\n")
    os.replace(partial, target)
  finally:
    pathlib.Path(partial).unlink(missing_ok=True)
  return target
