"""The lab's services on the provisioning network: 198.18.0.1:<port> relayed to the same port on 127.0.0.1.

    python -m lab.provisioning_relay --lab-dir var/lab --port 8000 --port 8090

The boot service (Django: runserver, gunicorn, a test's live server) and the lab image server listen on
loopback, where the control plane and the host's tools reach them. A lab server reaches them where a
server on a site does, on the provisioning network: 198.18.0.1, the host end of its own veth (the unswitched
lab, lab.netns) or of the switch's provisioning uplink on VLAN 100 (the switched lab, lab.switched). This
process listens on 198.18.0.1 (never on 0.0.0.0) for each given port and copies every connection both ways to
127.0.0.1 on the same port, so what the server reaches is exactly what its VLAN reaches: a server moved to a
tenant or quarantine VLAN reaches no 198.18.0.1 at all (the lab switch routes nothing there).

Why a relay and not a DNAT on the host (nft ``dnat to 127.0.0.1`` with ``route_localnet``): it changes
nothing in the host's own firewall or sysctls (a shared machine), and it is one process that the lab starts
with ``lab up`` and stops with ``lab down`` (lab.supervisor finds it by its ``--lab-dir`` as it finds the
node processes). The cost: the boot service sees the relay's loopback address as the caller, not the
server's; what a server may reach is decided on the switch, not by that address.

The listeners bind with IP_FREEBIND: in the unswitched lab 198.18.0.1 appears on the host only with the first
server's network, after the lab starts. Bytes are moved with splice(2) through a pipe, never through Python
buffers (a deploy streams whole images through here). Once every listener is bound, the process writes
``<lab dir>/relay.json`` (its pid, address and ports); lab.supervisor waits for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("lab.provisioning_relay")

PROVISIONING_ADDRESS = "198.18.0.1"  # lab.netns.GATEWAY_ADDRESS: kept import-free, this runs detached
READY_FILE = "relay.json"
LOG_FILE = "relay.log"
MODULE = "lab.provisioning_relay"
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_PIPE_CHUNK = 64 * 1024  # a pipe's default capacity: one splice moves at most this much
BACKLOG = 256


LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def server_url(url: str) -> str:
    """``url`` as a lab server reaches it: a service on this host's loopback is reached at the provisioning
    address, same scheme, port and path (``http://127.0.0.1:8000/boot`` -> ``http://198.18.0.1:8000/boot``);
    any other URL is returned as it is. Pure."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        return url
    netloc = PROVISIONING_ADDRESS if parts.port is None else f"{PROVISIONING_ADDRESS}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def relayed_port(url: str) -> int | None:
    """The loopback port the relay must carry for ``url`` (None: not a service on this host's loopback)."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        return None
    return parts.port or (443 if parts.scheme == "https" else 80)


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Move bytes from ``source`` to ``target`` until ``source`` ends, then end ``target``'s sending side."""
    read_end, write_end = os.pipe()
    try:
        while True:
            moved = os.splice(source.fileno(), write_end, _PIPE_CHUNK)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, target.fileno(), moved)
    except OSError:
        pass  # a reset on either side ends this direction; the other direction sees it too
    finally:
        os.close(read_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        log.warning("port %d: 127.0.0.1:%d does not answer (%s); connection closed", port, port, exc)
        client.close()
        return
    upstream.settimeout(None)
    backward = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    backward.start()
    _pump(client, upstream)
    backward.join()
    client.close()
    upstream.close()


def listen(address: str, port: int) -> socket.socket:
    """A TCP listener on ``address``:``port`` (IP_FREEBIND: the address may not be on the host yet).

    :raises OSError: the port is taken on that address.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
    try:
        sock.bind((address, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _serve(listener: socket.socket, port: int) -> None:
    while True:
        try:
            client, _peer = listener.accept()
        except OSError:
            return
        threading.Thread(target=_relay, args=(client, port), name=f"relay-{port}", daemon=True).start()


def serve(lab_dir: Path, address: str, ports: list[int]) -> None:
    """Relay ``address``:port to 127.0.0.1:port for every port until SIGTERM; ``<lab_dir>/relay.json`` says
    when every listener is bound."""
    listeners = [(listen(address, port), port) for port in ports]
    ready = {"pid": os.getpid(), "address": address, "ports": ports}
    tmp = lab_dir / f".{READY_FILE}.tmp"
    tmp.write_text(json.dumps(ready))
    os.replace(tmp, lab_dir / READY_FILE)
    log.info("relaying %s to 127.0.0.1 on ports %s", address, ", ".join(map(str, ports)))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for listener, port in listeners:
        threading.Thread(target=_serve, args=(listener, port), name=f"listen-{port}", daemon=True).start()
    stop.wait()
    for listener, _port in listeners:
        listener.close()
    with contextlib.suppress(OSError, ValueError):
        if json.loads((lab_dir / READY_FILE).read_text()).get("pid") == os.getpid():
            (lab_dir / READY_FILE).unlink()


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number from 1 to 65535, not {text}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--address", default=PROVISIONING_ADDRESS)
    parser.add_argument("--port", type=_port, action="append", required=True, help="relay this port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        serve(args.lab_dir, args.address, sorted(set(args.port)))
    except OSError as exc:
        print(f"provisioning relay: cannot listen on {args.address}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
