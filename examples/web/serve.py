"""Serve the browser page and the exported models, and nothing else of the repository (`make web`).

    python3 examples/web/serve.py [--root .] [--bind 127.0.0.1] [--port 8000]

Only what the page fetches is served: /examples/web/ (the page and onnxruntime-web in its node_modules),
/examples/common/ (the module it shares with the Node.js example) and /models/onnx/ (the models and
samples.json), laid out as in the repository so that the page's relative URLs work. Every other path, .git/
and .dvc/ (where remote credentials can live) included, is a 404, as are folder listings. Python's standard
library only: no virtual environment needed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import posixpath
import sys
import urllib.parse
from pathlib import Path

SERVED = ("/examples/web/", "/examples/common/", "/models/onnx/")
PAGE = SERVED[0]


def url_path(raw: str) -> str:
    """The path of the file a request names, relative to the root, exactly as SimpleHTTPRequestHandler's
    translate_path builds it (query dropped, %-escapes decoded, `.` `..` and empty segments dropped), so
    that what is checked is what would be opened."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    trailing_slash = path.rstrip().endswith("/")
    try:
        path = urllib.parse.unquote(path, errors="surrogatepass")
    except UnicodeDecodeError:
        path = urllib.parse.unquote(path)
    words = [word for word in posixpath.normpath(path).split("/")
             if word and word not in (os.curdir, os.pardir) and not os.path.dirname(word)]
    return "/" + "/".join(words) + ("/" if trailing_slash and words else "")


def is_served(path: str) -> bool:
    """Whether a resolved URL path lies in one of the served folders (checked on the URL, so the models may
    be links into DVC's cache)."""
    return any((path + "/").startswith(folder) for folder in SERVED) and "\0" not in path


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server restricted to SERVED; `/` leads to the page."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def send_head(self):  # type: ignore[override]  # both GET and HEAD come through here
        path = url_path(self.path)
        if path == "/":
            self.send_response(302)
            self.send_header("Location", PAGE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if not is_served(path):
            self.send_error(404, "Not served: only the page (/examples/web/) and the models (/models/onnx/)")
            return None
        return super().send_head()

    def list_directory(self, path):  # type: ignore[override]
        self.send_error(404, "No folder listings")
        return None

    def log_message(self, format: str, *args) -> None:  # one short line per request, on stderr
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class QuietPageHandler(PageHandler):
    def log_message(self, format: str, *args) -> None:
        pass


def make_server(root: str | Path, bind: str = "127.0.0.1", port: int = 0, quiet: bool = False,
                ) -> http.server.ThreadingHTTPServer:
    """A server for `root` laid out like the repository (port 0: a free one); call serve_forever() on it."""
    handler = functools.partial(QuietPageHandler if quiet else PageHandler, directory=str(root))
    return http.server.ThreadingHTTPServer((bind, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2],
                        help="the repository (default: the one holding this script)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)
    if not (args.root / "examples" / "web" / "index.html").is_file():
        parser.error(f"{args.root}: no examples/web/index.html there: --root must be the repository")
    try:
        server = make_server(args.root.resolve(), args.bind, args.port)
    except OSError as exc:
        print(f"serve.py: error: cannot listen on {args.bind}:{args.port} ({exc.strerror}); "
              "pick another port (make web WEB_PORT=8080)", file=sys.stderr)
        return 1
    print(f"Open http://{args.bind}:{server.server_address[1]}{PAGE}  (Ctrl-C to stop; only the page and "
          "models/onnx/ are served)", flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
