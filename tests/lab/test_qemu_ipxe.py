"""Real firmware: Debian's iPXE ROM in QEMU (TCG, no KVM) boots from our rendered iPXE script.

The guest's network is QEMU user-mode (slirp) with ``restrict=on``: nothing leaves the host. The
DHCP bootfile is ``http://10.0.2.100/boot/${mac:hexhyp}.ipxe``, the URL form our dnsmasq config
chain-loads; slirp's ``guestfwd`` spawns a small relay per connection to a loopback HTTP server that
answers with ``render_ipxe_script`` and records what iPXE asks for. The kernel and initrd are
placeholder bytes: the check is that real iPXE fetches and runs our script (script, kernel, initrd).
Debian's 2019 iPXE has no ``poweroff``, so the test stops QEMU itself once the initrd was requested.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provisioner.pxe.ipxe import normalize_mac, render_ipxe_script

QEMU = shutil.which("qemu-system-x86_64")
# QEMU loads virtio-net's option ROM (efi-virtio.rom) from ipxe-qemu by itself; naming it with
# ``romfile=`` made SeaBIOS skip the network boot entry with QEMU 7.2, so the test only checks it is there.
ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")
MAC = "52:54:00:12:34:56"
GUEST_BOOT_HOST = "http://10.0.2.100"
TOKEN = "qemu-token-0123456789abcdef"
DEADLINE = 90.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None or not ROM.exists(), reason="qemu-system-x86 and ipxe-qemu are needed"),
]

RELAY = """
import os, socket, sys, threading
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def upstream():
    while data := os.read(0, 65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := conn.recv(65536):
    os.write(1, data)
"""


class RecordingBootServer:
    """Answers /boot/<mac>.ipxe with our script and the kernel/initrd with placeholders; records paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.initrd_seen = threading.Event()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                recorder.paths.append(self.path)
                if self.path.startswith("/boot/") and self.path.endswith(".ipxe"):
                    normalize_mac(self.path.removeprefix("/boot/").removesuffix(".ipxe"))
                    body = render_ipxe_script(GUEST_BOOT_HOST, TOKEN, "qemu-node").encode()
                elif self.path in ("/boot/deploy/vmlinuz", "/boot/deploy/initrd.img"):
                    body = b"\0" * 4096
                else:
                    body = b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if self.path == "/boot/deploy/initrd.img":
                    recorder.initrd_seen.set()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __enter__(self) -> RecordingBootServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_real_ipxe_fetches_our_script_then_kernel_and_initrd(tmp_path: Path) -> None:
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    serial = tmp_path / "serial.log"
    with RecordingBootServer() as server:
        netdev = (
            "user,id=n0,restrict=on,"
            f"guestfwd=tcp:10.0.2.100:80-cmd:{sys.executable} {relay} {server.port},"
            f"bootfile={GUEST_BOOT_HOST}/boot/${{mac:hexhyp}}.ipxe"
        )
        cmd = [
            QEMU, "-accel", "tcg", "-nographic", "-m", "128", "-no-reboot",
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1",
            "-boot", "n",
        ]  # fmt: skip
        started = time.monotonic()
        with open(serial, "wb") as out:
            qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            try:
                seen = server.initrd_seen.wait(DEADLINE)
                elapsed = time.monotonic() - started
            finally:
                qemu.terminate()
                try:
                    qemu.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    qemu.kill()
                    qemu.wait(timeout=10)
        console = serial.read_bytes().decode(errors="replace")
        assert seen, f"iPXE did not fetch the initrd within {DEADLINE:.0f} s; console:\n{console[-3000:]}"
        hyphen_mac = MAC.replace(":", "-")
        assert server.paths[:3] == [
            f"/boot/{hyphen_mac}.ipxe",
            "/boot/deploy/vmlinuz",
            "/boot/deploy/initrd.img",
        ]
        assert "iPXE" in console and f"{hyphen_mac}.ipxe" in console
        print(f"iPXE fetched script, kernel and initrd {elapsed:.1f} s after QEMU started (TCG)")
