"""The LLDP reader of the deploy ramdisk (provisioner.pxe.lldp) on frames built octet by octet per IEEE
802.1AB: TLV header = 7 bits of type and 9 bits of length, then the value. Truncated and malformed frames
give what was heard before the fault, never an exception."""

from __future__ import annotations

import socket
import struct

import pytest

from provisioner.pxe import lldp

SWITCH_MAC = bytes.fromhex("0c42a1b2c3d4")


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!H", (kind << 9) | len(value)) + value


def chassis_mac(mac: bytes = SWITCH_MAC) -> bytes:
    return tlv(1, bytes([4]) + mac)


def port_ifname(name: str) -> bytes:
    return tlv(2, bytes([5]) + name.encode())


def ttl(seconds: int = 120) -> bytes:
    return tlv(3, struct.pack("!H", seconds))


END = b"\x00\x00"


def frame(*tlvs: bytes, tag: int | None = None) -> bytes:
    header = lldp.LLDP_MULTICAST + SWITCH_MAC
    if tag is not None:
        header += struct.pack("!HH", 0x8100, tag)
    return header + struct.pack("!H", 0x88CC) + b"".join(tlvs)


def test_a_switch_names_itself_and_its_port_by_system_name_and_interface_name():
    heard = lldp.parse_frame(
        frame(chassis_mac(), port_ifname("swp3"), ttl(), tlv(4, b"to lab-h100-03"), tlv(5, b"leaf1"), END)
    )
    assert heard is not None
    assert (heard.switch, heard.port) == ("leaf1", "swp3")
    assert heard.chassis_id == "0c:42:a1:b2:c3:d4"
    assert heard.port_description == "to lab-h100-03"
    assert heard.source_mac == "0c:42:a1:b2:c3:d4"
    assert heard.problem is None
    assert heard.as_report() == {"heard": True, "switch": "leaf1", "port": "swp3"}


def test_without_a_system_name_the_chassis_id_names_the_switch():
    heard = lldp.parse_frame(frame(chassis_mac(), port_ifname("Ethernet12"), ttl(), END))
    assert (heard.switch, heard.port) == ("0c:42:a1:b2:c3:d4", "Ethernet12")
    by_address = lldp.parse_frame(frame(tlv(1, bytes([5, 1, 10, 0, 0, 2])), port_ifname("swp1"), ttl(), END))
    assert by_address.switch == "10.0.0.2"
    by_local_name = lldp.parse_frame(
        frame(tlv(1, bytes([7]) + b"rack4-tor"), port_ifname("swp1"), ttl(), END)
    )
    assert by_local_name.switch == "rack4-tor"


def test_a_locally_assigned_port_id_is_the_port():
    heard = lldp.parse_frame(
        frame(chassis_mac(), tlv(2, bytes([7]) + b"1/1/7"), ttl(), tlv(4, b"uplink"), END)
    )
    assert heard.port == "1/1/7"


def test_a_port_id_by_mac_gives_way_to_the_port_description():
    port_mac = bytes.fromhex("0c42a1b2c3e7")
    heard = lldp.parse_frame(
        frame(chassis_mac(), tlv(2, bytes([3]) + port_mac), ttl(), tlv(4, b"swp7"), tlv(5, b"leaf2"), END)
    )
    assert (heard.switch, heard.port) == ("leaf2", "swp7")
    assert heard.port_id == "0c:42:a1:b2:c3:e7"
    assert heard.port_id_subtype == 3
    # and with no description, the MAC itself is what was heard
    bare = lldp.parse_frame(frame(chassis_mac(), tlv(2, bytes([3]) + port_mac), ttl(), END))
    assert bare.port == "0c:42:a1:b2:c3:e7"


def test_a_vlan_tagged_frame_is_read_past_its_tag():
    heard = lldp.parse_frame(frame(chassis_mac(), port_ifname("swp9"), ttl(), tlv(5, b"leaf3"), END, tag=100))
    assert (heard.switch, heard.port) == ("leaf3", "swp9")


def test_another_ethertype_or_a_runt_is_not_lldp():
    ipv4 = lldp.LLDP_MULTICAST + SWITCH_MAC + b"\x08\x00" + b"\x45" * 40
    assert lldp.parse_frame(ipv4) is None
    assert lldp.parse_frame(b"\x01\x80\xc2") is None
    assert lldp.parse_frame(b"") is None


@pytest.mark.parametrize(
    ("cut", "switch", "port", "problem"),
    [
        # cut inside the System Name's value: chassis and port were read
        (-4, "0c:42:a1:b2:c3:d4", "swp3", "TLV type 5 claims 5 octets"),
        # cut inside the System Name's header
        (-8, "0c:42:a1:b2:c3:d4", "swp3", "a TLV header is cut off"),
        # cut inside the Port ID: only the chassis was heard
        (14 + 9 + 3, "0c:42:a1:b2:c3:d4", None, "TLV type 2 claims 5 octets"),
        # nothing but the Ethernet header and the chassis TLV's header
        (14 + 2, None, None, "TLV type 1 claims 7 octets"),
    ],
)
def test_a_truncated_frame_reports_what_came_before_the_cut(cut, switch, port, problem):
    whole = frame(chassis_mac(), port_ifname("swp3"), ttl(), tlv(5, b"leaf1"), END)
    heard = lldp.parse_frame(whole[:cut])
    assert (heard.switch, heard.port) == (switch, port)
    assert problem in heard.problem


def test_malformed_tlvs_never_raise_and_keep_what_is_readable():
    no_end = lldp.parse_frame(frame(chassis_mac(), port_ifname("swp4"), ttl(), tlv(5, b"leaf1")))
    assert (no_end.switch, no_end.port, no_end.problem) == ("leaf1", "swp4", "the frame has no End TLV")
    empty_ids = lldp.parse_frame(frame(tlv(1, b""), tlv(2, b""), ttl(), tlv(5, b"leaf1"), END))
    assert (empty_ids.switch, empty_ids.port) == ("leaf1", None)
    assert empty_ids.problem == "the Chassis ID TLV is empty"
    # control characters and bytes that are not UTF-8 in names: kept printable, never raised on
    odd = lldp.parse_frame(
        frame(chassis_mac(), port_ifname("swp\n5\x00"), ttl(), tlv(5, b"le\xffaf\x1b1"), END)
    )
    assert odd.port == "swp5"
    assert odd.switch == "le\ufffdaf1"
    # a name of nothing but spaces is no name: the chassis id stands in
    blank = lldp.parse_frame(frame(chassis_mac(), port_ifname("swp1"), ttl(), tlv(5, b"   "), END))
    assert blank.switch == "0c:42:a1:b2:c3:d4"
    # a MAC-subtype id of the wrong length is read as text rather than refused
    short_mac = lldp.parse_frame(frame(tlv(1, bytes([4]) + b"ab"), port_ifname("swp1"), ttl(), END))
    assert short_mac.switch == "ab"
    # garbage after the ethertype
    assert lldp.parse_frame(lldp.LLDP_MULTICAST + SWITCH_MAC + b"\x88\xcc\xff").problem


def test_every_prefix_of_a_frame_parses_without_raising():
    whole = frame(
        chassis_mac(),
        port_ifname("swp3"),
        ttl(),
        tlv(4, b"desc"),
        tlv(5, b"leaf1"),
        tlv(127, b"\x00\x12\x0f\x01\x03"),
        END,
    )
    for cut in range(len(whole) + 1):
        lldp.parse_frame(whole[:cut])


def test_nothing_heard_within_the_timeout_is_none():
    # a socket pair stands in for the raw socket's readiness: nothing arrives
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        assert lldp.receive(left, 0.2) is None


def test_listening_on_an_interface_that_does_not_exist_raises_oserror():
    with pytest.raises(OSError):
        lldp.listen("nc-no-such-if", 0.1)


# --- the agent's side: which NIC, how long, what it reports -------------------------------------------

ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default via 198.18.0.1
    "eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 192.0.2.0/24
)


def test_the_boot_nic_is_the_named_one_else_bootif_else_the_route_to_the_boot_service(tmp_path):
    from provisioner.pxe.agent import boot_interface

    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    sys_net = tmp_path / "net"
    for name, mac in (("eth0", "52:54:00:00:00:0a"), ("eth1", "52:54:00:00:00:0b")):
        (sys_net / name).mkdir(parents=True)
        (sys_net / name / "address").write_text(mac + "\n")
    where = {"sys_class_net": sys_net, "proc_net_route": routes}
    api = "http://192.0.2.1:8000/boot/api"
    assert boot_interface({"neocloud.lldp_interface": "ens1f0"}, api, **where)[0] == "ens1f0"
    assert boot_interface({"BOOTIF": "01-52-54-00-00-00-0a"}, api, **where) == (
        "eth0",
        "BOOTIF 52:54:00:00:00:0a",
    )
    # the most specific route wins over the default route
    assert boot_interface({}, api, **where) == ("eth1", "the route to the boot service (192.0.2.1)")
    assert boot_interface({}, "http://203.0.113.9/boot/api", **where)[0] == "eth0"
    name, why = boot_interface({}, "http://127.0.0.1:8000/boot/api", **where)
    assert name is None and "on this machine" in why


def test_the_lldp_timeout_comes_from_the_kernel_command_line_and_a_typo_keeps_the_default():
    from provisioner.pxe.agent import LLDP_TIMEOUT, lldp_timeout

    assert LLDP_TIMEOUT > 30  # a switch announces every 30 s by default
    assert lldp_timeout({}, None) == LLDP_TIMEOUT
    assert lldp_timeout({}, 5.0) == 5.0
    assert lldp_timeout({"neocloud.lldp_timeout": "3"}, 5.0) == 3.0
    assert lldp_timeout({"neocloud.lldp_timeout": "0"}, None) == 0
    assert lldp_timeout({"neocloud.lldp_timeout": "soon"}, None) == LLDP_TIMEOUT
    assert lldp_timeout({"neocloud.lldp_timeout": "-4"}, None) == LLDP_TIMEOUT


def test_a_probe_with_no_interface_or_none_to_open_reports_why_at_once():
    from provisioner.pxe.agent import CablingProbe

    none = CablingProbe(None, 35, "the boot service (127.0.0.1) is on this machine: no boot NIC to listen on")
    report = none.report(wait=True)
    assert report["heard"] is False and report["interface"] is None
    assert report["reason"].startswith("the boot service (127.0.0.1) is on this machine")
    assert report["waited"] < 1
    off = CablingProbe("eth0", 0, "named")
    assert off.report(wait=True)["reason"] == "LLDP listening is off (neocloud.lldp_timeout=0)"
    missing = CablingProbe("nc-no-such-if", 35, "named")
    assert missing.report(wait=True)["reason"].startswith("cannot listen for LLDP on nc-no-such-if")
