"""A lab IPMI 2.0 (RMCP+) BMC: pyghmi's BMC server made strict enough for stock clients.

pyghmi's server only implements cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) but
answers an open-session request for any suite as if it had accepted it, so a client that proposes
SHA-256 first (pyghmi's own client does) computes the wrong keys and hangs. ``LabIpmiBmc`` checks the
proposed algorithms and refuses anything but suite 3 with RMCP+ status 0x11, which makes clients fall
back to suite 3 the way they do with real BMCs. It also refuses unknown user names (status 0x0d)
instead of staying silent, honours the persistent and UEFI boot flags, and applies injected faults.

One pyghmi event loop serves every BMC created in a process; ``serve_forever`` keeps it alive when a
handler raises, and the supervisor runs one process per lab node so one crash takes down one BMC.
Several BMCs do share a process in the bench's light mode, so ``LabServerSession`` also keeps one
BMC's client restarting a login from drop the sessions of the others (see ``_handle_ipmi_packet``),
and pyghmi's I/O thread reads without waiting (``provisioner.drivers.pyghmi_io``): with its own reader,
one answer sent at the wrong moment left it blocked on one BMC's socket and the whole group silent.
"""

from __future__ import annotations

import logging
import struct
import time

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from lab.machine import SimulatedServer
from provisioner.drivers import pyghmi_io
from provisioner.drivers.base import BootDevice, BootMode, BootSetting, PowerState

log = logging.getLogger(__name__)

pyghmi_io.install()

# RMCP+ algorithm numbers (IPMI 2.0 tables 13-17..13-19) of cipher suite 3, the only one served.
SUPPORTED_AUTH = 1  # RAKP-HMAC-SHA1
SUPPORTED_INTEGRITY = 1  # HMAC-SHA1-96
SUPPORTED_CONFIDENTIALITY = 1  # AES-CBC-128
RMCP_STATUS_NO_CIPHER_SUITE_MATCH = 0x11
RMCP_STATUS_UNAUTHORIZED_NAME = 0x0D
PAYLOAD_OPEN_SESSION_REQUEST = 0x10
PAYLOAD_OPEN_SESSION_RESPONSE = 0x11
AUTHTYPE_RMCP_PLUS = 6

# IPMI completion codes
CC_OK = 0x00
CC_INVALID_DATA = 0xCC
CC_PARAM_UNSUPPORTED = 0x80
CC_UNRECOGNIZED = 0xC1

# Boot flags parameter 5 (IPMI 2.0 table 28-14), device selector in bits 5:2 of data byte 2
BOOT_FLAGS_VALID = 0x80
BOOT_FLAGS_PERSISTENT = 0x40
BOOT_FLAGS_EFI = 0x20
BOOT_SELECTOR_PXE = 1
BOOT_SELECTOR_DISK = 2
DEVICE_BY_SELECTOR = {BOOT_SELECTOR_PXE: BootDevice.PXE, BOOT_SELECTOR_DISK: BootDevice.DISK}
SELECTOR_BY_DEVICE = {v: k for k, v in DEVICE_BY_SELECTOR.items()}


def proposed_cipher_suite_ok(request: bytes | bytearray) -> bool:
    """True when an RMCP+ open-session request (payload only) allows suite 3's algorithms.

    Each of the three proposals is 8 bytes (type, 2 reserved, length, algorithm, 3 reserved) after
    the 8-byte header; a length of 0 means "whatever the BMC picks" and is accepted.
    """
    if len(request) < 32:
        return False
    wanted = (SUPPORTED_AUTH, SUPPORTED_INTEGRITY, SUPPORTED_CONFIDENTIALITY)
    for offset, algorithm in zip((8, 16, 24), wanted, strict=True):
        length, proposed = request[offset + 3], request[offset + 4] & 0x3F
        if length != 0 and proposed != algorithm:
            return False
    return True


def _open_session_refusal(request: bytes | bytearray, status: int) -> bytes:
    """An RMCP+ open-session response carrying an error status (session-less, unauthenticated)."""
    payload = bytes([request[0], status, 0, 0]) + bytes(request[4:8])
    header = b"\x06\x00\xff\x07" + bytes([6, PAYLOAD_OPEN_SESSION_RESPONSE]) + b"\x00" * 8
    return header + struct.pack("<H", len(payload)) + payload


def starts_a_login(packet: bytes | bytearray) -> bool:
    """True for a packet that belongs to no session: an IPMI 1.5 message with session id and sequence
    number 0 (Get Channel Authentication Capabilities, the first step of every login) or an RMCP+
    open-session request."""
    if len(packet) < 13 or packet[:4] != b"\x06\x00\xff\x07":
        return False
    if packet[4] == AUTHTYPE_RMCP_PLUS:
        return packet[5] & 0x3F == PAYLOAD_OPEN_SESSION_REQUEST
    return packet[4] in (0, 2) and packet[5:13] == bytes(8)


class LabServerSession(serversession.ServerSession):
    """pyghmi's server session, refusing unsupported suites and unknown users explicitly, and routing
    a login restarted from the same client port to this BMC alone."""

    def _handle_ipmi_packet(self, data, sockaddr=None, qent=None):  # type: ignore[no-untyped-def]
        # pyghmi's server routes packets by bmc_handlers[client address and port][BMC port], one table
        # for every BMC in the process, and pyghmi's client sends to many BMCs from one UDP port. When
        # that client restarts a login (it does after a RAKP timeout), pyghmi here deletes
        # bmc_handlers[client address and port]: the sessions of *every* BMC of this process with that
        # client, mid-login or established, whose next packets then go to the session-less handler and
        # are dropped. Measured with 200 bench BMCs under CPU load: one restart took 8 logins of one
        # group process with it, and the sweep reported them unreachable. Drop this BMC's entry only,
        # and never the client's table: pyghmi's I/O thread reads it without a lock.
        handlers = ipmisession.Session.bmc_handlers.get(sockaddr, {})
        current = handlers.get(self.bmc.port) is self
        if current and data[4] != AUTHTYPE_RMCP_PLUS and starts_a_login(data):
            del handlers[self.bmc.port]  # the client started over: this session is finished
            current = False
        if current:
            super()._handle_ipmi_packet(data, sockaddr, qent)
        elif starts_a_login(data):
            self.bmc.sessionless_data(data, sockaddr)
        # else: queued for a session that a newer login has replaced; drop it

    def _got_rmcp_openrequest(self, data):  # type: ignore[no-untyped-def]
        # a client re-opening a session from the same source port lands here, not in sessionless_data
        if not proposed_cipher_suite_ok(bytes(data)):
            ipmisession._io_sendto(
                self.socket, _open_session_refusal(data, RMCP_STATUS_NO_CIPHER_SUITE_MATCH), self.sockaddr
            )
            return
        # a fresh session object: pyghmi would reuse this one with the old session's sequence numbers
        # and keys, and then drop every packet of the new session as a replay
        LabServerSession(
            self.authdata, self.kg, self.sockaddr, self.socket, bytearray(data), self.uuid, self.bmc
        )

    def sessionless_data(self, data, sockaddr):  # type: ignore[no-untyped-def]
        # pyghmi calls this on a session when the client's routing table is gone; the BMC, not the
        # stale session, must answer
        self.bmc.sessionless_data(data, sockaddr)

    def _got_rakp1(self, data):  # type: ignore[no-untyped-def]
        username = bytes(data[28:]).decode("utf-8", "replace")
        if self.authdata.get(username) is None:
            payload = bytearray([data[0], RMCP_STATUS_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(payload, 0x13, retry=False)  # RAKP message 2
            return
        super()._got_rakp1(data)


class LabIpmiBmc(pyghmi_bmc.Bmc):
    """The IPMI endpoint of one lab server, bound to its own loopback address."""

    def __init__(
        self, server: SimulatedServer, address: str, port: int, username: str, password: str
    ) -> None:
        self.server = server
        # IPMI 2.0 sec. 28.12: a one-time boot flag is cleared when no chassis power command follows within
        # 60 s, unless parameter 3 ("valid bit clearing") says not to (what careful clients send first)
        self._boot_flag_set_at: float | None = None
        self._keep_boot_flag = False
        super().__init__({username: password}, port=port, address=address)
        if ipmisession.iosockets[0] is self.serversocket:
            # pyghmi wakes its I/O thread (asleep in select() on the sockets that existed when it fell
            # asleep, for up to 300 s) with a datagram to (session.myself, port of its first socket).
            # myself is a client's loopback guess, ::ffff:127.0.0.1, but here the first socket is this
            # BMC's, bound to its own address: the wake-up went nowhere, and a group process did not
            # read its later BMCs' sockets until a packet came for the first one (5 s of each group
            # test's start went into 0.2 s probes timing out). Aim the wake-up at this socket.
            ipmisession.myself = self.serversocket.getsockname()[0]

    # --- session-less traffic (channel auth caps, cipher suites, open session) -------------------

    def sessionless_data(self, data, sockaddr):  # type: ignore[no-untyped-def]
        faults = self.server.faults()
        if faults.drop:
            return
        if faults.delay:
            time.sleep(faults.delay)
        data = bytearray(data)
        if len(data) >= 22 and data[0] == 6 and data[2:4] == b"\xff\x07" and data[4] == 6 and data[5] == 0x10:
            request = data[16:]
            if not proposed_cipher_suite_ok(request):
                ipmisession._io_sendto(
                    self.serversocket,
                    _open_session_refusal(request, RMCP_STATUS_NO_CIPHER_SUITE_MATCH),
                    sockaddr,
                )
                return
            LabServerSession(
                self.authdata, self.kg, sockaddr, self.serversocket, request, self.uuid, bmc=self
            )
            return
        super().sessionless_data(data, sockaddr)

    # --- commands inside a session ----------------------------------------------------------------

    def handle_raw_request(self, request, session):  # type: ignore[no-untyped-def]
        faults = self.server.faults()
        if faults.drop:
            return
        if faults.delay:
            time.sleep(faults.delay)
        super().handle_raw_request(request, session)

    def get_power_state(self) -> str:
        return "on" if self.server.reported_power_state() == PowerState.ON else "off"

    def _expire_boot_flag(self, power_command: bool = False) -> None:
        """Clear a one-time boot flag left unused past its timer; a power command stops the timer."""
        set_at = self._boot_flag_set_at
        expired = set_at is not None and time.monotonic() - set_at > self.server.faults().boot_flag_timeout
        if expired and not self._keep_boot_flag:
            self.server.clear_override()
            self._boot_flag_set_at = None
        if power_command:
            self._boot_flag_set_at = None

    def power_on(self) -> int:
        self._expire_boot_flag(power_command=True)
        self.server.power_on()
        return CC_OK

    def power_off(self) -> int:
        self._expire_boot_flag(power_command=True)
        self.server.power_off()
        return CC_OK

    def power_shutdown(self) -> int:
        self._expire_boot_flag(power_command=True)
        self.server.power_off()
        return CC_OK

    def power_reset(self) -> int:
        self._expire_boot_flag(power_command=True)
        self.server.reset()
        return CC_OK

    def power_cycle(self) -> int:
        self._expire_boot_flag(power_command=True)
        self.server.reset()
        return CC_OK

    def cold_reset(self) -> int:
        return CC_OK

    def get_system_boot_options(self, request, session):  # type: ignore[no-untyped-def]
        selector = request["data"][0] & 0x7F if request["data"] else 0
        if selector != 5:
            return session.send_ipmi_response(code=CC_PARAM_UNSUPPORTED)
        self._expire_boot_flag()
        setting = self.server.boot_setting()
        flags = BOOT_FLAGS_VALID
        if setting.persistent:
            flags |= BOOT_FLAGS_PERSISTENT
        if setting.mode == BootMode.UEFI:
            flags |= BOOT_FLAGS_EFI
        device = SELECTOR_BY_DEVICE[setting.device] << 2
        return session.send_ipmi_response(data=[1, 5, flags, device, 0, 0, 0])

    def set_system_boot_options(self, request, session):  # type: ignore[no-untyped-def]
        data = request["data"]
        selector = data[0] & 0x7F if data else -1
        if selector == 3:  # valid bit clearing: bit 3 set = keep the flag past the 60 s timer
            self._keep_boot_flag = len(data) > 1 and bool(data[1] & 0x08)
            return session.send_ipmi_response()
        if selector in (0, 2, 4):  # set-in-progress, service partition scan, boot info acknowledge
            return session.send_ipmi_response()
        if selector != 5 or len(data) < 3:
            return session.send_ipmi_response(code=CC_PARAM_UNSUPPORTED)
        flags, device = data[1], DEVICE_BY_SELECTOR.get((data[2] >> 2) & 0x0F)
        if not flags & BOOT_FLAGS_VALID:
            return session.send_ipmi_response()  # clearing the valid bit: nothing to store
        if device is None:
            return session.send_ipmi_response(code=CC_INVALID_DATA)
        setting = BootSetting(
            device,
            persistent=bool(flags & BOOT_FLAGS_PERSISTENT),
            mode=BootMode.UEFI if flags & BOOT_FLAGS_EFI else BootMode.LEGACY,
        )
        try:
            self.server.set_boot(setting)
        except ValueError:
            return session.send_ipmi_response(code=CC_INVALID_DATA)
        self._boot_flag_set_at = None if setting.persistent else time.monotonic()
        return session.send_ipmi_response()


def serve_forever(poll: float = 1.0) -> None:
    """Run pyghmi's event loop for every BMC in this process, surviving handler crashes."""
    while True:
        try:
            ipmisession.Session.wait_for_rsp(poll)
        except Exception:  # one bad packet must not take the BMCs of this process down
            log.exception("IPMI event loop error (continuing)")
