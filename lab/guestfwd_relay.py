"""Relay one guest TCP connection to a loopback port: what QEMU's user-mode ``guestfwd=...-cmd:`` runs.

    python guestfwd_relay.py PORT

QEMU starts this once per connection the guest opens to the forwarded address and connects the guest's
side of it to our stdin and stdout; we copy both directions to and from ``127.0.0.1:PORT``. It is run by
path (not ``-m``) so that it needs nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

BUFFER = 256 * 1024


def _guest_to_host(conn: socket.socket) -> None:
    try:
        while data := os.read(0, BUFFER):
            conn.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: guestfwd_relay.py PORT", file=sys.stderr)
        return 2
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    threading.Thread(target=_guest_to_host, args=(conn,), daemon=True).start()
    try:
        while data := conn.recv(BUFFER):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
