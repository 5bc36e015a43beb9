"""A small threaded HTTP server for a directory of images, built for throughput.

    python -m provisioner.pxe.imageserver --dir var/images --bind 127.0.0.1 --port 8081

GET and HEAD with ``Content-Length``, single byte ranges (``Range: bytes=a-b``, answered 206; a Range
header this server does not take, such as several ranges or a malformed one, is ignored and the whole
file answered 200, as RFC 9110 allows), no directory listing, no path outside the directory. File bodies go out with ``socket.sendfile``
(``os.sendfile``: the kernel copies page cache to the socket, no user-space copy). A real site puts
any HTTP cache or CDN in front; the deploy agent only needs GET with ``Content-Length``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import os
import posixpath
import re
import socket
import threading
import urllib.parse
from pathlib import Path
from types import TracebackType

from provisioner.httputil import ClosingHandlerMixin

log = logging.getLogger("provisioner.pxe.imageserver")

# At most 19 digits: offsets up to 10^19 bytes, and int() never meets a number too long to convert.
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
SEND_BUFFER = 4 * 1024 * 1024


class _Handler(ClosingHandlerMixin, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ImageHTTPServer
    server_version = "NeocloudImageServer/1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _resolve(self) -> Path | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        normalized = posixpath.normpath(path).lstrip("/")
        if not normalized or normalized.startswith("..") or "\0" in normalized:
            return None
        candidate = (self.server.root / normalized).resolve()
        if self.server.root not in candidate.parents or not candidate.is_file():
            return None
        return candidate

    def _error(self, code: int, message: str) -> None:
        body = f"{message}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, send_body: bool) -> None:
        path = self._resolve()
        if path is None:
            self._error(404, "no such image")
            return
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start, end = 0, size - 1
            status = 200
            header = self.headers.get("Range")
            match = _RANGE.match(header.strip()) if header else None
            if match and match.group(1) and match.group(2) and int(match.group(2)) < int(match.group(1)):
                match = None  # "bytes=5-3" is no range at all: ignored
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # a suffix range: the last N bytes
                    start = max(size - int(match.group(2)), 0)
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            length = end - start + 1 if size else 0
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if send_body and length:
                self.wfile.flush()
                try:
                    self.connection.sendfile(fh, start, length)
                except (BrokenPipeError, ConnectionResetError):
                    # the client went away mid-image (an agent that stopped reading): nothing to answer
                    log.info("%s closed the connection during %s", self.address_string(), self.path)
                    self.close_connection = True

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)


class _ImageHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        self.root = root.resolve()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Big socket buffers keep sendfile from stalling on a fast reader.
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        super().server_bind()


class ImageServer:
    """Serve ``directory`` over HTTP. Use as a context manager or call ``start()``/``stop()``.

    ``port=0`` picks a free port; ``url`` is the base URL once started.
    """

    def __init__(self, directory: str | os.PathLike[str], bind: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"image directory {self.directory} does not exist")
        self._httpd = _ImageHTTPServer((bind, port), self.directory)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{self.port}"

    def url_for(self, name: str) -> str:
        """The URL of the image file ``name`` in the served directory."""
        return f"{self.url}/{urllib.parse.quote(name)}"

    def start(self) -> ImageServer:
        """Serve in a daemon thread. Not idempotent: call once."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="image-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a directory of images over HTTP.")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = ImageServer(args.dir, args.bind, args.port)
    log.info("serving %s on %s", args.dir, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
