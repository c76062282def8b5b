"""dit_jax.downloads against files served from 127.0.0.1 (never the internet).

A download lands in the cache once and is reused; a published sha256, or the hash prefix in the
file's name, that the bytes do not match is refused and nothing is cached; a file with no known
hash gets the first download's sha256 recorded beside it (sha256sum's format) and a cached copy
that no longer matches it is refused; an unreachable server, or a connection that ends before
the announced length, gives an OSError and leaves nothing in the cache; $DIT_JAX_CACHE moves
the cache.
"""
import hashlib
import http.server
import pathlib
import threading

import pytest

from dit_jax import downloads
from local_server import LocalServer

DATA = bytes(range(256)) * 4099  # ~1 MB: more than one read chunk
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def served(tmp_path):
  root = tmp_path / "served"
  root.mkdir()
  (root / "weights.bin").write_bytes(DATA)
  (root / f"weights-{SHA[:8]}.pth").write_bytes(DATA)
  with LocalServer(root) as server:
    yield server


def test_pinned_sha256_downloads_once(served, tmp_path):
  cache = tmp_path / "cache"
  path = downloads.download(f"{served.url}/weights.bin", cache, sha256=SHA)
  assert path == cache / "weights.bin" and path.read_bytes() == DATA
  assert downloads.download(f"{served.url}/weights.bin", cache, sha256=SHA) == path
  assert served.requests == 1
  assert sorted(p.name for p in cache.iterdir()) == ["weights.bin"]  # no partial file, no record


def test_wrong_published_sha256_caches_nothing(served, tmp_path):
  cache = tmp_path / "cache"
  wrong = "0" * 64
  with pytest.raises(ValueError) as raised:
    downloads.download(f"{served.url}/weights.bin", cache, sha256=wrong)
  assert (f"downloaded file has sha256 {SHA}, but the published sha256 is {wrong}"
          in str(raised.value)) and "Nothing was cached" in str(raised.value)
  assert list(cache.iterdir()) == []


def test_hash_prefix_in_the_name_is_checked(served, tmp_path):
  path = downloads.download(f"{served.url}/weights-{SHA[:8]}.pth", tmp_path)
  assert path.read_bytes() == DATA
  path.write_bytes(DATA[:-1])
  with pytest.raises(ValueError, match=f"but its name says it starts with {SHA[:8]}"):
    downloads.download(f"{served.url}/weights-{SHA[:8]}.pth", tmp_path)


def test_unknown_hash_is_recorded_and_checked_later(served, tmp_path):
  path = downloads.download(f"{served.url}/weights.bin", tmp_path)
  record = tmp_path / "weights.bin.sha256"
  assert record.read_text() == f"{SHA}  weights.bin\n"
  assert downloads.download(f"{served.url}/weights.bin", tmp_path) == path
  assert served.requests == 1
  path.write_bytes(DATA[: len(DATA) // 2])  # an interrupted copy, an edit
  with pytest.raises(ValueError) as raised:
    downloads.download(f"{served.url}/weights.bin", tmp_path)
  message = str(raised.value)
  assert f"has sha256 {hashlib.sha256(DATA[: len(DATA) // 2]).hexdigest()}" in message
  assert f"recorded at its first download ({record}) is {SHA}" in message
  assert "Delete it to download it again" in message


def test_unreachable_server_says_what_else_to_do(tmp_path):
  with LocalServer(tmp_path) as server:
    url = f"{server.url}/weights.bin"
  with pytest.raises(OSError, match=f"Could not download {url} .*Copy it here yourself."):
    downloads.download(url, tmp_path / "cache", manual_hint="Copy it here yourself.")
  assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_cache_dir_follows_the_environment(served, tmp_path, monkeypatch):
  monkeypatch.setenv(downloads.CACHE_ENV, str(tmp_path / "elsewhere"))
  assert downloads.cache_dir() == str(tmp_path / "elsewhere")
  path = downloads.download(f"{served.url}/weights.bin", sha256=SHA)
  assert path == pathlib.Path(tmp_path / "elsewhere" / "weights.bin")
  monkeypatch.delenv(downloads.CACHE_ENV)
  assert downloads.cache_dir() == str(pathlib.Path("~/.cache/dit_jax").expanduser())


def test_a_download_cut_short_leaves_nothing(tmp_path):
  class CutShort(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      self.send_response(200)
      self.send_header("Content-Length", str(len(DATA)))
      self.end_headers()
      self.wfile.write(DATA[:1000])
      self.close_connection = True

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{httpd.server_address[1]}/weights.bin"
  try:
    with pytest.raises(OSError, match=f"Download of {url} stopped after 1000 of {len(DATA)} bytes"):
      downloads.download(url, tmp_path)
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert list(tmp_path.iterdir()) == []
