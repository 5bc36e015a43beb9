"""pyghmi's socket reads made independent of its socket writes; installed once per process.

pyghmi reads every UDP socket of a process on one I/O thread: ``_io_graball`` calls ``_io_recvfrom``,
which does ``sock.setblocking(False)`` and then ``sock.recvfrom()`` until the socket is empty. Its
``_io_sendto`` does ``sock.setblocking(True)`` before each send, on whichever thread sends (our event
loop thread in the driver, the BMC's answering thread in the lab). The sockets are shared (a lab group
process answers for 25 BMCs, the client multiplexes up to 64 BMCs per socket), so a send that lands
between those two lines leaves the I/O thread in a *blocking* recvfrom on a socket with nothing to
read: it stops reading every other socket of the process until a packet happens to arrive on that
one. Traced in a lab group process: "recvfrom on 127.0.21.110:21110 blocked 24.463 s (socket timeout
None); the main thread's _io_sendto switched the socket to blocking 911 us after the I/O thread had
entered _io_recvfrom" -- meanwhile every BMC of that process was silent and the sweep reported the
ones still logging in as unreachable (issue 4). In the driver the same race can stop the I/O thread
while ``run_jobs`` waits on it.

``install()`` replaces ``_io_recvfrom`` with a read that passes ``MSG_DONTWAIT``, so it never waits
whatever mode another thread left the socket in. Nothing else in pyghmi changes.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pyghmi.ipmi.private.session as ipmisession

_INSTALL_LOCK = threading.Lock()


def recv_without_waiting(sock: socket.socket, size: int) -> tuple[bytes, Any] | None:
    """One datagram from ``sock`` if one is queued, else None; never blocks, whatever the socket's mode."""
    try:
        return sock.recvfrom(size, socket.MSG_DONTWAIT)
    except OSError:  # EAGAIN (nothing queued) or a transient error: as pyghmi's own reader, "nothing"
        return None


def install() -> None:
    """Make pyghmi's I/O thread read without waiting, from its next read on. Idempotent, thread-safe."""
    with _INSTALL_LOCK:
        if ipmisession._io_recvfrom is not recv_without_waiting:
            ipmisession._io_recvfrom = recv_without_waiting
