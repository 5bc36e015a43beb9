"""A stdlib HTTP server implementing the boot service's contract, for testing the agent and firmware.

It answers ``GET /boot/<mac>.ipxe`` (our rendered script when a deployment is pending for that MAC,
else the local-boot script), serves placeholder kernel and initrd bytes, and implements the agent API
under ``/boot/api`` with one-time bearer tokens (unknown token 403, second GET of instructions 409).
Every request is recorded (without the token) so tests can assert what a client did.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from typing import Any

from provisioner.pxe.ipxe import normalize_mac, render_ipxe_script, render_local_boot_script

KERNEL_BYTES = b"NEOCLOUD-PLACEHOLDER-KERNEL\n" * 64
INITRD_BYTES = b"NEOCLOUD-PLACEHOLDER-INITRD\n" * 64


@dataclasses.dataclass
class Deployment:
    node: str
    mac: str
    token: str
    instructions: dict[str, Any]
    used: bool = False
    progress: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    result: dict[str, Any] | None = None
    result_event: threading.Event = dataclasses.field(default_factory=threading.Event)


class BootService:
    """Start with ``with BootService() as svc:``; ``svc.url`` is the base URL."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.deployments: dict[str, Deployment] = {}  # by token
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _deployment(self) -> Deployment | None:
                header = self.headers.get("Authorization", "")
                token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
                return service.deployments.get(token)

            def do_GET(self) -> None:
                with service.lock:
                    service.requests.append(("GET", self.path))
                if self.path == "/boot/deploy/vmlinuz":
                    self._send(200, KERNEL_BYTES, "application/octet-stream")
                elif self.path == "/boot/deploy/initrd.img":
                    self._send(200, INITRD_BYTES, "application/octet-stream")
                elif self.path.startswith("/boot/") and self.path.endswith(".ipxe"):
                    mac = normalize_mac(self.path.removeprefix("/boot/").removesuffix(".ipxe"))
                    pending = [d for d in service.deployments.values() if d.mac == mac and not d.used]
                    if pending:
                        script = render_ipxe_script(service.url, pending[0].token, pending[0].node)
                    else:
                        script = render_local_boot_script()
                    self._send(200, script.encode(), "text/plain")
                elif self.path == "/boot/api/instructions":
                    with service.lock:
                        deployment = self._deployment()
                        if deployment is None:
                            self._send(403, b'{"error": "unknown token"}')
                            return
                        if deployment.used:
                            self._send(409, b'{"error": "token already used"}')
                            return
                        deployment.used = True
                    self._send(200, json.dumps(deployment.instructions).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:
                with service.lock:
                    service.requests.append(("POST", self.path))
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                deployment = self._deployment()
                if deployment is None:
                    self._send(403, b'{"error": "unknown token"}')
                elif self.path == "/boot/api/progress":
                    deployment.progress.append(body)
                    self._send(200, b"{}")
                elif self.path == "/boot/api/result":
                    deployment.result = body
                    deployment.result_event.set()
                    self._send(200, b"{}")
                else:
                    self._send(404, b"{}")

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def api_url(self) -> str:
        return f"{self.url}/boot/api"

    def add_deployment(
        self,
        node: str,
        mac: str,
        token: str,
        image_url: str,
        sha256: str,
        size: int,
        authorized_keys: list[str] | None = None,
    ) -> Deployment:
        instructions = {
            "node": node,
            "image": {"url": image_url, "sha256": sha256, "format": "raw", "size": size},
            "config": {
                "hostname": node,
                "authorized_keys": authorized_keys or [],
                "network": {"address": "198.18.0.5", "prefix": 15},
            },
        }
        deployment = Deployment(node, normalize_mac(mac), token, instructions)
        self.deployments[token] = deployment
        return deployment

    def paths(self) -> list[str]:
        with self.lock:
            return [path for _, path in self.requests]

    def __enter__(self) -> BootService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
