"""A real HTTP receiver for webhook deliveries: a threading http.server on 127.0.0.1 that records every
request (headers, body, when) and can be told to answer 500 for the next N requests or to be slow. It
verifies signatures as a customer's receiver would, with nothing of Neocloud's code (the algorithm of
docs/events-and-metrics.md)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def signed_with(self, secret: str, tolerance: float = 300) -> bool:
        """The receiver's check: HMAC-SHA256 over "<t>.<body>" equals v1, and t is recent."""
        parts = dict(p.split("=", 1) for p in self.headers.get("Neocloud-Signature", "").split(","))
        timestamp = parts.get("t", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
            return False
        expected = hmac.new(
            secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass
class Receiver:
    """Start with ``start()``; ``url`` is where it listens. ``fail_next(n)``: the next n requests get a
    500. ``delay``: seconds each answer waits (a slow endpoint)."""

    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    _failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    status = 500 if receiver._failures > 0 else 200
                    receiver._failures = max(0, receiver._failures - 1)
                    receiver.received.append(Received(dict(self.headers.items()), body, time.time(), status))
                answer = b'{"ok": true}' if status == 200 else b"boom"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._failures = n

    def delivered(self) -> list[Received]:
        """Requests answered 200, in the order they arrived."""
        with self._lock:
            return [r for r in self.received if r.status == 200]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
