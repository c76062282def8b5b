"""A file server on 127.0.0.1 for download tests: nothing reaches the internet."""
import functools
import http.server
import threading


class LocalServer:
  """Serves ``directory`` on 127.0.0.1 in a thread (``url``) and counts the GET requests.
  Use as a context manager, or call ``close()``."""

  def __init__(self, directory):
    self.requests = 0
    server = self

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):
        server.requests += 1
        super().do_GET()

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
