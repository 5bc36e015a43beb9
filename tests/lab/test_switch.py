"""The lab switch and the Linux switch driver: real packets between lab servers, the switch's own state.

One lab switch per module (namespace ``ncsw-t<hex>``, management address in 198.19.x.y) with ports
``swp1``-``swp10``: swp1 and swp2 cable two lab servers (namespaces ``ncsrv-<hex>-a/b``, 198.19.200.1/24
and .2/24 on their eth1), the others a spare namespace. Each test sets its scene from the host (lab.switch),
acts through the driver over SSH, and checks with ping and with the switch's own ``bridge link``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab import switch as lab_switch
from provisioner.drivers.fake_switch import FakeSwitchDriver, read_fake_switch, write_fake_switch
from provisioner.drivers.switch import LinuxSwitchDriver, PortState, SwitchAccess, SwitchDriver
from provisioner.errors import (
    InvalidRequest,
    SwitchAuthFailed,
    SwitchUnreachable,
    UnknownSwitch,
    UnknownSwitchPort,
    UnsupportedOperation,
)

pytestmark = [pytest.mark.lab]


def _lab_missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not lab_switch.tools_available():
        return "openssh-server or iproute2 is not installed"
    if shutil.which("ping") is None:
        return "iputils-ping is not installed"
    return ""


SERVER_A, SERVER_B = "198.19.200.1", "198.19.200.2"
SPARE_PORTS = [f"swp{n}" for n in range(3, 11)]


class Lab:
    def __init__(self, switch: lab_switch.LabSwitch, server_a: str, server_b: str) -> None:
        self.switch = switch
        self.server_a = server_a
        self.server_b = server_b

    def access(self, **changes: object) -> SwitchAccess:
        fields: dict[str, object] = {
            "name": self.switch.name,
            "driver": "linux",
            "address": self.switch.address,
            "port": 22,
            "username": lab_switch.SSH_USER,
            "private_key": self.switch.private_key,
        }
        fields.update(changes)
        return SwitchAccess(**fields)  # type: ignore[arg-type]

    def driver(self, **changes: object) -> LinuxSwitchDriver:
        return LinuxSwitchDriver(self.access(**changes))

    def ping(self, from_netns: str, address: str) -> bool:
        proc = subprocess.run(
            ["ip", "netns", "exec", from_netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", address],
            capture_output=True,
            timeout=20,
            check=False,
        )
        return proc.returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if _lab_missing():
        pytest.skip(_lab_missing())
    tag = secrets.token_hex(3)
    address = f"198.19.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"
    servers = [f"ncsrv-{tag}-a", f"ncsrv-{tag}-b", f"ncsrv-{tag}-x"]
    switch = lab_switch.start_switch(f"t{tag}", address, tmp_path_factory.mktemp("switch"))
    try:
        for name in servers:
            lab_switch.create_server_namespace(name)
        lab_switch.add_port(switch, "swp1", servers[0], peer_address=f"{SERVER_A}/24", vlan=100)
        lab_switch.add_port(switch, "swp2", servers[1], peer_address=f"{SERVER_B}/24", vlan=100)
        for port in SPARE_PORTS:
            lab_switch.add_port(switch, port, servers[2], peer_interface=f"eth{port[3:]}", vlan=100)
        yield Lab(switch, servers[0], servers[1])
    finally:
        lab_switch.stop_switch(switch)
        for name in servers:
            lab_switch.destroy_server_namespace(name)


def test_servers_on_one_vlan_reach_each_other_and_not_once_the_driver_moves_one(lab: Lab) -> None:
    lab_switch.set_port_vlan(lab.switch, "swp1", 100)
    lab_switch.set_port_vlan(lab.switch, "swp2", 100)
    assert lab.ping(lab.server_a, SERVER_B)

    lab.driver().set_access_vlan("swp2", 200)

    assert lab_switch.bridge_link(lab.switch)["swp2"] == "br200"
    assert not lab.ping(lab.server_a, SERVER_B)
    assert not lab.ping(lab.server_b, SERVER_A)

    lab.driver().set_access_vlan("swp1", 200)
    assert lab.ping(lab.server_a, SERVER_B)


def test_port_state_reads_back_what_bridge_link_shows(lab: Lab) -> None:
    lab_switch.set_port_vlan(lab.switch, "swp3", 310)
    lab_switch.set_port_vlan(lab.switch, "swp4", 4094)
    lab_switch.set_port_vlan(lab.switch, "swp5", None)

    states = lab.driver().port_states(["swp1", "swp3", "swp4", "swp5"])

    shown = lab_switch.bridge_link(lab.switch)
    assert "swp5" not in shown
    for port, state in states.items():
        assert state.vlan == (int(shown[port].removeprefix("br")) if port in shown else None)
    assert states["swp3"] == PortState(port="swp3", vlan=310, up=True)
    assert states["swp5"].vlan is None
    assert lab.driver().port_state("swp4").vlan == 4094


def test_validate_refuses_an_unknown_port_naming_switch_and_port(lab: Lab) -> None:
    lab.driver().validate(["swp1", "swp2"])
    with pytest.raises(UnknownSwitchPort) as caught:
        lab.driver().validate("swp99")
    message = str(caught.value)
    assert message.startswith(f"switch {lab.switch.name} has no port swp99 (its ports: swp1 to swp10)")
    assert "\n" not in message
    with pytest.raises(UnknownSwitchPort, match="has no port 'eth0': not a port name"):
        lab.driver().validate("eth0")  # the management interface is not a switch port


def test_a_batch_with_an_unknown_port_changes_nothing(lab: Lab) -> None:
    lab_switch.set_port_vlan(lab.switch, "swp6", 100)
    with pytest.raises(UnknownSwitchPort, match="no port swp42"):
        lab.driver().set_access_vlans({"swp6": 600, "swp42": 600})
    assert lab_switch.bridge_link(lab.switch)["swp6"] == "br100"
    with pytest.raises(InvalidRequest, match="VLAN 4095 is not a VLAN id"):
        lab.driver().set_access_vlans({"swp6": 4095})


def test_wrong_key_is_refused_in_one_sentence(lab: Lab, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(other)], check=True)
    with pytest.raises(SwitchAuthFailed) as caught:
        lab.driver(private_key=other.read_text()).port_state("swp1")
    message = str(caught.value)
    assert message == (
        f"switch {lab.switch.name} ({lab.switch.address}:22) refused the login as 'root': check the switch's "
        "recorded username and password or key"
    )
    assert not caught.value.retryable
    with pytest.raises(SwitchAuthFailed):
        lab.driver(private_key="", password="not-the-password").port_state("swp1")


def test_a_switch_that_does_not_answer_is_one_sentence(lab: Lab) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = LinuxSwitchDriver(
        SwitchAccess(name="sw-gone", driver="linux", address="127.0.0.1", port=port, username="root",
                     password="x", timeout=2)
    )  # fmt: skip
    with pytest.raises(SwitchUnreachable) as caught:
        driver.set_access_vlan("swp1", 100)
    assert str(caught.value).startswith(f"switch sw-gone (127.0.0.1:{port}) did not answer SSH within 2 s")
    assert caught.value.retryable


def test_batched_moves_use_one_ssh_session_per_switch(lab: Lab) -> None:
    moves = {port: 700 + i for i, port in enumerate(SPARE_PORTS)}
    before = lab.switch.ssh_sessions()

    lab.driver().set_access_vlans(moves)

    assert lab.switch.ssh_sessions() == before + 1
    shown = lab_switch.bridge_link(lab.switch)
    assert {port: shown[port] for port in moves} == {port: f"br{vlan}" for port, vlan in moves.items()}

    before = lab.switch.ssh_sessions()
    for port in SPARE_PORTS[:3]:
        lab.driver().set_access_vlan(port, 100)
    assert lab.switch.ssh_sessions() == before + 3

    before = lab.switch.ssh_sessions()
    with lab.driver() as driver:  # one session shared by several calls
        driver.validate(SPARE_PORTS)
        driver.set_access_vlans(dict.fromkeys(SPARE_PORTS, 800))
        assert {s.vlan for s in driver.port_states(SPARE_PORTS).values()} == {800}
    assert lab.switch.ssh_sessions() == before + 1


def test_a_kept_session_serves_the_next_batch_and_a_failed_one_is_dropped(lab: Lab) -> None:
    """The engine's batches keep their session for the next one in the process (keep_session): one login
    for two batches; a session whose batch failed is closed, and a driver that keeps none logs in anew."""
    from provisioner.errors import UnknownSwitchPort

    before = lab.switch.ssh_sessions()
    for vlan in (810, 811):
        driver = lab.driver()
        driver.keep_session = True
        with driver:
            driver.set_access_vlans(dict.fromkeys(SPARE_PORTS, vlan))
    assert lab.switch.ssh_sessions() == before + 1
    assert {lab_switch.bridge_link(lab.switch)[p] for p in SPARE_PORTS} == {"br811"}

    driver = lab.driver()
    driver.keep_session = True
    with pytest.raises(UnknownSwitchPort), driver:  # reuses the kept session, then drops it
        driver.set_access_vlans({"swp999": 812})
    assert lab.switch.ssh_sessions() == before + 1
    driver = lab.driver()
    driver.keep_session = True
    with driver:
        driver.port_states(SPARE_PORTS)
    assert lab.switch.ssh_sessions() == before + 2
    with lab.driver() as plain:  # keeps nothing: its own login
        plain.port_states(SPARE_PORTS)
    assert lab.switch.ssh_sessions() == before + 3


def test_save_writes_the_commands_that_restore_every_port(lab: Lab) -> None:
    lab_switch.set_port_vlan(lab.switch, "swp7", 170)
    lab.driver().save()
    saved = lab.switch.saved_config.read_text().splitlines()
    assert "ip link set swp7 master br170" in saved
    assert len(saved) == len(lab_switch.bridge_link(lab.switch))


def test_trunks_are_refused_as_unsupported(lab: Lab) -> None:
    with pytest.raises(UnsupportedOperation, match="cannot carry tagged"):
        lab.driver().add_trunk_vlans("swp1", [10, 20])
    with pytest.raises(UnsupportedOperation):
        lab.driver().remove_trunk_vlans("swp1", [10])


@pytest.mark.skipif(not lab_switch.lldpd_available(), reason="lldpd is not installed")
def test_lldp_announces_the_switch_name_and_port_to_the_server(lab: Lab) -> None:
    assert lab_switch.read_lldp(lab.server_b, "eth1", timeout=30) == (lab.switch.name, "swp2")


def test_stopping_the_switch_leaves_nothing_behind(tmp_path: Path) -> None:
    if _lab_missing():
        pytest.skip(_lab_missing())
    tag = secrets.token_hex(3)
    server = f"ncsrv-{tag}"
    switch = lab_switch.start_switch(f"t{tag}", f"198.19.{secrets.randbelow(254) + 1}.7", tmp_path)
    try:
        lab_switch.create_server_namespace(server)
        lab_switch.add_port(switch, "swp1", server, vlan=5)
        pids = netns.namespace_pids(switch.netns)
        assert pids
        lab_switch.stop_switch(switch)

        assert not netns.namespace_exists(switch.netns)
        host_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
        assert netns.host_interface_name(switch.netns) not in host_links.stdout
        server_links = subprocess.run(
            ["ip", "-n", server, "-o", "link", "show"], capture_output=True, text=True, check=True
        )
        assert "eth1" not in server_links.stdout  # the cable went with the switch
        assert all(_gone(pid) for pid in pids)
        assert not list(lab_switch.LLDP_RUN_DIR.glob(f"{switch.netns}.*"))
    finally:
        lab_switch.stop_switch(switch)
        lab_switch.destroy_server_namespace(server)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return True


def test_the_registered_switch_logs_in_with_its_encrypted_key(lab: Lab, db) -> None:
    from provisioner.hardware import switch_driver
    from provisioner.models import Switch

    switch = Switch(name=lab.switch.name, address=lab.switch.address, username="root")
    switch.private_key = lab.switch.private_key
    switch.save()
    assert lab.switch.private_key not in switch.private_key_encrypted
    assert "BEGIN" not in repr(switch) and "***" in repr(switch.access())

    assert switch_driver(lab.switch.name).port_state("swp1").port == "swp1"

    with pytest.raises(UnknownSwitch) as caught:
        switch_driver("sw-nowhere")
    assert str(caught.value) == (
        "switch 'sw-nowhere' is not registered: add it (address and login) before moving its ports"
    )


# --- the contract: the Linux driver against the lab switch and the fake switch pass the same tests ----------


class SwitchUnderTest:
    def __init__(self, kind: str, lab: Lab | None, directory: Path | None) -> None:
        self.kind, self.lab, self.directory = kind, lab, directory

    def driver(self) -> SwitchDriver:
        if self.lab is not None:
            return self.lab.driver()
        access = SwitchAccess(
            name="fake1", driver="fake", address="fake1", port=22, username="admin", password="pw"
        )
        return FakeSwitchDriver(access, self.directory)

    def set_scene(self, port: str, vlan: int) -> None:
        if self.lab is not None:
            lab_switch.set_port_vlan(self.lab.switch, port, vlan)
        else:
            state = read_fake_switch("fake1", self.directory)
            write_fake_switch("fake1", self.directory, ports={**state["ports"], port: vlan})

    def vlan_on_the_switch(self, port: str) -> int | None:
        if self.lab is not None:
            bridge = lab_switch.bridge_link(self.lab.switch).get(port)
            return int(bridge.removeprefix("br")) if bridge else None
        return read_fake_switch("fake1", self.directory)["ports"][port]

    def sessions(self) -> int:
        if self.lab is not None:
            return self.lab.switch.ssh_sessions()
        return int(read_fake_switch("fake1", self.directory)["sessions"])


@pytest.fixture(params=["lab", "fake"])
def switch_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> SwitchUnderTest:
    if request.param == "lab":
        return SwitchUnderTest("lab", request.getfixturevalue("lab"), None)
    write_fake_switch("fake1", tmp_path, ports={f"swp{n}": 100 for n in range(1, 11)})
    return SwitchUnderTest("fake", None, tmp_path)


def test_contract_moves_read_back_as_the_switch_holds_them(switch_under_test: SwitchUnderTest) -> None:
    sut = switch_under_test
    sut.set_scene("swp8", 100)
    sut.driver().set_access_vlans({"swp8": 801, "swp9": 802})
    sut.driver().set_access_vlan("swp8", 803)  # idempotent target, moved again
    assert sut.vlan_on_the_switch("swp8") == 803 and sut.vlan_on_the_switch("swp9") == 802
    assert sut.driver().port_state("swp9") == PortState(port="swp9", vlan=802, up=True)


def test_contract_an_unknown_port_is_named_and_changes_nothing(switch_under_test: SwitchUnderTest) -> None:
    sut = switch_under_test
    sut.set_scene("swp10", 100)
    with pytest.raises(UnknownSwitchPort, match=r"has no port swp77 \(its ports: swp1 to swp10\)"):
        sut.driver().set_access_vlans({"swp10": 900, "swp77": 900})
    assert sut.vlan_on_the_switch("swp10") == 100
    with pytest.raises(UnknownSwitchPort):
        sut.driver().validate(["swp1", "swp77"])


def test_contract_a_batch_is_one_session(switch_under_test: SwitchUnderTest) -> None:
    sut = switch_under_test
    before = sut.sessions()
    sut.driver().set_access_vlans({f"swp{n}": 950 + n for n in range(3, 11)})
    assert sut.sessions() == before + 1
    with sut.driver() as driver:
        driver.validate(["swp3", "swp4"])
        driver.set_access_vlan("swp3", 960)
        assert driver.port_state("swp3").vlan == 960
    assert sut.sessions() == before + 2


def test_contract_trunks_are_unsupported(switch_under_test: SwitchUnderTest) -> None:
    with pytest.raises(UnsupportedOperation):
        switch_under_test.driver().add_trunk_vlans("swp1", [10])
