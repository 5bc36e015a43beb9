"""What the switch port a NIC is cabled to says about itself by LLDP (IEEE 802.1AB), standard library only.

The deploy ramdisk carries nothing but the standard library, so this is a raw ``AF_PACKET`` socket on one
interface, bound to the LLDP ethertype (0x88cc), joined to the nearest-bridge multicast group
(01:80:c2:00:00:0e) so that a real NIC's filter lets the announcements in, and a TLV parser::

    neighbour = listen("eth0", timeout=35.0)   # None when nothing was heard in time
    neighbour.switch, neighbour.port            # ("leaf1", "swp3")

The switch is the System Name TLV, else the Chassis ID (a MAC as ``aa:bb:..``, a network address as text);
the port is the Port ID when its subtype is an interface name or locally assigned, else the Port
Description, else the Port ID whatever its subtype (a MAC as ``aa:bb:..``). A switch sends every 30 s by
default (msgTxInterval), so a listener that must hear one waits a little longer than that.

Frames are input from the wire: a truncated or malformed frame never raises, it yields what could be read
before the fault (``LldpNeighbour.problem`` says what was wrong). Listening needs CAP_NET_RAW (root).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import select
import socket
import struct
import time

ETH_P_LLDP = 0x88CC
LLDP_MULTICAST = bytes.fromhex("0180c200000e")
ETHERNET_HEADER = 14
# Linux's <linux/if_packet.h>: Python's socket module does not export these.
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0

TLV_END = 0
TLV_CHASSIS_ID = 1
TLV_PORT_ID = 2
TLV_TTL = 3
TLV_PORT_DESCRIPTION = 4
TLV_SYSTEM_NAME = 5

CHASSIS_MAC = 4
CHASSIS_NETWORK_ADDRESS = 5
PORT_MAC = 3
PORT_NETWORK_ADDRESS = 4
PORT_INTERFACE_NAME = 5
PORT_LOCAL = 7
# A name longer than this is cut: the TLVs allow 255 octets, and the report stays small.
MAX_TEXT = 255


@dataclasses.dataclass(frozen=True)
class LldpNeighbour:
    """What one LLDP frame said. ``switch`` and ``port`` are what a cabling check compares; the other fields
    are the TLVs they came from. ``problem`` names a fault of the frame (parsing stopped there)."""

    switch: str | None
    port: str | None
    chassis_id: str | None = None
    port_id: str | None = None
    port_id_subtype: int | None = None
    port_description: str | None = None
    system_name: str | None = None
    source_mac: str | None = None
    problem: str | None = None

    def as_report(self) -> dict[str, object]:
        """The JSON the deploy agent reports: heard, switch, port, and the frame's fault if any."""
        report: dict[str, object] = {"heard": True, "switch": self.switch, "port": self.port}
        if self.problem:
            report["problem"] = self.problem
        return report


def _mac(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def _text(octets: bytes) -> str | None:
    """Printable text of a TLV string (control characters dropped), or None when nothing printable is left."""
    text = octets[:MAX_TEXT].decode("utf-8", errors="replace")
    text = "".join(c for c in text if c.isprintable()).strip()
    return text or None


def _address(octets: bytes) -> str | None:
    """An 802.1AB network address: IANA address family (1 IPv4, 2 IPv6) then the address."""
    if len(octets) == 5 and octets[0] == 1:
        return str(ipaddress.IPv4Address(octets[1:]))
    if len(octets) == 17 and octets[0] == 2:
        return str(ipaddress.IPv6Address(octets[1:]))
    return octets.hex() or None


def _identifier(subtype: int, value: bytes, mac_subtype: int, address_subtype: int) -> str | None:
    if subtype == mac_subtype and len(value) == 6:
        return _mac(value)
    if subtype == address_subtype:
        return _address(value)
    return _text(value)


def parse_tlvs(payload: bytes) -> tuple[list[tuple[int, bytes]], str | None]:
    """The (type, value) TLVs of an LLDPDU up to its End TLV, and the fault that stopped parsing early
    (None when the frame was whole). Pure; never raises."""
    tlvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(payload):
        if len(payload) - offset < 2:
            return tlvs, f"a TLV header is cut off at octet {offset}"
        (header,) = struct.unpack_from("!H", payload, offset)
        kind, length = header >> 9, header & 0x1FF
        offset += 2
        if kind == TLV_END:
            return tlvs, None
        if offset + length > len(payload):
            return tlvs, f"TLV type {kind} claims {length} octets, {len(payload) - offset} remain"
        tlvs.append((kind, payload[offset : offset + length]))
        offset += length
    return tlvs, "the frame has no End TLV"


def parse_lldpdu(payload: bytes, source_mac: str | None = None) -> LldpNeighbour:
    """Read an LLDPDU (the Ethernet payload after ethertype 0x88cc). Pure; never raises: a malformed or
    truncated frame gives what was read before the fault, with ``problem`` set."""
    tlvs, problem = parse_tlvs(payload)
    chassis: str | None = None
    port_id: str | None = None
    port_description: str | None = None
    system_name: str | None = None
    port_subtype: int | None = None
    for kind, value in tlvs:
        if kind == TLV_CHASSIS_ID and chassis is None:
            if not value:
                problem = problem or "the Chassis ID TLV is empty"
                continue
            chassis = _identifier(value[0], value[1:], CHASSIS_MAC, CHASSIS_NETWORK_ADDRESS)
        elif kind == TLV_PORT_ID and port_id is None:
            if not value:
                problem = problem or "the Port ID TLV is empty"
                continue
            port_subtype = value[0]
            port_id = _identifier(value[0], value[1:], PORT_MAC, PORT_NETWORK_ADDRESS)
        elif kind == TLV_PORT_DESCRIPTION and port_description is None:
            port_description = _text(value)
        elif kind == TLV_SYSTEM_NAME and system_name is None:
            system_name = _text(value)
    port = port_id if port_subtype in (PORT_INTERFACE_NAME, PORT_LOCAL) else None
    port = port or port_description or port_id
    return LldpNeighbour(
        switch=system_name or chassis,
        port=port,
        chassis_id=chassis,
        port_id=port_id,
        port_id_subtype=port_subtype,
        port_description=port_description,
        system_name=system_name,
        source_mac=source_mac,
        problem=problem,
    )


def parse_frame(frame: bytes) -> LldpNeighbour | None:
    """Read a whole Ethernet frame; None when it is not LLDP (another ethertype, or too short for a
    header). Pure; never raises. An 802.1Q tag before the ethertype is skipped."""
    if len(frame) < ETHERNET_HEADER:
        return None
    offset = 12
    (ethertype,) = struct.unpack_from("!H", frame, offset)
    if ethertype == 0x8100 and len(frame) >= ETHERNET_HEADER + 4:
        offset += 4
        (ethertype,) = struct.unpack_from("!H", frame, offset)
    if ethertype != ETH_P_LLDP:
        return None
    return parse_lldpdu(frame[offset + 2 :], source_mac=_mac(frame[6:12]))


def open_socket(interface: str) -> socket.socket:
    """A raw socket receiving the LLDP frames that arrive on ``interface``, with the NIC told to accept the
    LLDP multicast address. Raises OSError (no such interface: ENODEV; not root: EPERM)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_LLDP))
    try:
        sock.bind((interface, ETH_P_LLDP))
        # struct packet_mreq { int mr_ifindex; unsigned short mr_type, mr_alen; unsigned char mr_address[8]; }
        mreq = struct.pack("iHH8s", socket.if_nametoindex(interface), PACKET_MR_MULTICAST, 6, LLDP_MULTICAST)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except BaseException:
        sock.close()
        raise
    return sock


def receive(sock: socket.socket, timeout: float) -> LldpNeighbour | None:
    """The first LLDP frame received on ``sock`` within ``timeout`` seconds that names a switch or a port,
    or None. Frames this host sends are ignored (an LLDP daemon of its own would otherwise answer).
    Raises OSError when the socket fails."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return None
        frame, address = sock.recvfrom(65535)
        if len(address) >= 3 and address[2] == socket.PACKET_OUTGOING:
            continue
        neighbour = parse_frame(frame)
        if neighbour is not None and (neighbour.switch or neighbour.port):
            return neighbour


def listen(interface: str, timeout: float) -> LldpNeighbour | None:
    """Listen on ``interface`` for up to ``timeout`` seconds; the first LLDP neighbour heard, or None.
    Not idempotent only in that it waits. Raises OSError when the interface cannot be listened on."""
    with open_socket(interface) as sock:
        return receive(sock, timeout)
