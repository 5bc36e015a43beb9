"""The Linux switch driver's routing against the lab switch: VLAN gateways and 1:1 NAT, with real packets.

One lab switch per module (namespace ``ncsw-r<hex>``, management address in 198.19.x.y, a public uplink to
the host with a public /24 of its own) and three server namespaces: a1 and a2 on VLAN 1000 (198.19.3.0/24),
b1 on VLAN 1001 (198.19.4.0/24). The driver gives the VLANs their gateways and publishes addresses; ping,
TCP connections and the switch's own ``ip addr`` / ``nft`` say what happened.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab import switch as lab_switch
from provisioner.drivers.switch import LinuxSwitchDriver, RoutingState, SwitchAccess
from provisioner.errors import InvalidRequest, UnknownSwitchPort

pytestmark = [pytest.mark.lab]

VLAN_A, VLAN_B = 1000, 1001
GW_A, GW_B = "198.19.3.1/24", "198.19.4.1/24"
A1, A2, B1 = "198.19.3.2", "198.19.3.3", "198.19.4.2"


def _lab_missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not lab_switch.tools_available() or shutil.which("ping") is None:
        return "openssh-server, iproute2 or iputils-ping is not installed"
    if not os.path.exists(lab_switch.NFT):
        return "nftables is not installed"
    return ""


class Scene:
    def __init__(self, switch: lab_switch.LabSwitch, servers: dict[str, str], public: str) -> None:
        self.switch, self.servers, self.public_prefix = switch, servers, public

    def driver(self) -> LinuxSwitchDriver:
        return LinuxSwitchDriver(
            SwitchAccess(
                name=self.switch.name, driver="linux", address=self.switch.address, port=22,
                username="root", private_key=self.switch.private_key,
            )
        )  # fmt: skip

    def public(self, host: int) -> str:
        return f"{self.public_prefix}.{host}"

    def ping(self, server: str, address: str) -> bool:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.servers[server], "ping", "-c", "1", "-W", "1", address],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip
        return proc.returncode == 0

    def tcp(self, server: str, address: str, port: int) -> bool:
        code = (
            "import socket,sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
            "except OSError:\n sys.exit(1)\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", self.servers[server], sys.executable, "-c", code, address, str(port)],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip
        return proc.returncode == 0

    def listen(self, server: str, port: int) -> subprocess.Popen[str]:
        """A TCP server in ``server`` that answers one connection with the server's name."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); print('ready', flush=True)\n"
            "while True:\n c, a = s.accept(); c.sendall(sys.argv[2].encode() + b' ' + a[0].encode()); c.close()\n"
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.servers[server], sys.executable, "-c", code, str(port), server],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc


def _connect_from_host(address: str, port: int) -> str | None:
    try:
        with socket.create_connection((address, port), timeout=2) as sock:
            return sock.recv(100).decode()
    except OSError:
        return None


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    if _lab_missing():
        pytest.skip(_lab_missing())
    tag = secrets.token_hex(3)
    address = f"198.19.{secrets.randbelow(120) + 1}.{secrets.randbelow(253) + 2}"
    public = f"198.19.{secrets.randbelow(120) + 130}"
    transit = 4 * secrets.randbelow(63)
    switch = lab_switch.start_switch(f"r{tag}", address, tmp_path_factory.mktemp("switch"))
    servers = {"a1": f"ncsrv-{tag}-a1", "a2": f"ncsrv-{tag}-a2", "b1": f"ncsrv-{tag}-b1"}
    try:
        lab_switch.add_public_uplink(
            switch, f"198.19.253.{transit + 1}", f"198.19.253.{transit + 2}", 30, f"{public}.0/24"
        )
        for port, (key, ip, vlan, gateway) in enumerate(
            [("a1", A1, VLAN_A, GW_A), ("a2", A2, VLAN_A, GW_A), ("b1", B1, VLAN_B, GW_B)], start=1
        ):
            lab_switch.create_server_namespace(servers[key])
            lab_switch.add_port(switch, f"swp{port}", servers[key], peer_address=f"{ip}/24", vlan=vlan)
            subprocess.run(
                ["ip", "-n", servers[key], "route", "replace", "default", "via", gateway.split("/")[0]],
                check=True, capture_output=True,
            )  # fmt: skip
        yield Scene(switch, servers, public)
    finally:
        lab_switch.stop_switch(switch)
        for name in servers.values():
            lab_switch.destroy_server_namespace(name)


def test_a_tenant_vlan_reaches_its_gateway_and_nothing_of_another_vlan_or_the_switch(scene: Scene) -> None:
    driver = scene.driver()
    driver.ensure_vlan_gateway(VLAN_A, GW_A)
    driver.ensure_vlan_gateway(VLAN_A, GW_A)  # idempotent
    driver.ensure_vlan_gateway(VLAN_B, GW_B)

    assert lab_switch.gateways_on_switch(scene.switch) == {VLAN_A: GW_A, VLAN_B: GW_B}
    assert scene.ping("a1", A2)
    assert scene.ping("a1", "198.19.3.1")
    assert scene.ping("b1", "198.19.4.1")
    assert not scene.ping("a1", B1)  # routed through the switch: forward drops it
    assert not scene.ping("b1", A1)
    assert not scene.ping("a1", "198.19.4.1")  # the other VLAN's gateway, a switch address
    assert not scene.ping("a1", scene.switch.address)  # the management address
    assert not scene.tcp("a1", scene.switch.address, 22)
    assert not scene.tcp("a1", "198.19.3.1", 22)  # sshd listens on the management interface only


def test_publish_maps_a_public_address_to_one_server_until_withdrawn(scene: Scene) -> None:
    driver = scene.driver()
    driver.ensure_vlan_gateway(VLAN_A, GW_A)
    public = scene.public(5)
    listener = scene.listen("a1", 2222)
    try:
        assert _connect_from_host(public, 2222) is None
        driver.publish(public, A1)
        driver.publish(public, A1)  # idempotent
        said = _connect_from_host(public, 2222)
        assert said is not None and said.startswith("a1 ")  # the server saw the host's own address
        assert lab_switch.published_on_switch(scene.switch) == {public: A1}
        assert not scene.tcp("b1", public, 2222)  # no tenant reaches in through the public side

        driver.withdraw(public)
        driver.withdraw(public)  # idempotent
        assert lab_switch.published_on_switch(scene.switch) == {}
        assert _connect_from_host(public, 2222) is None
    finally:
        listener.kill()
        listener.wait()


def test_publish_many_and_withdraw_many_in_one_session(scene: Scene) -> None:
    """A batch of 40 addresses (several nft transactions), one remapped among them, then withdrawn: as the
    switch's own nftables map shows, in one SSH session each."""
    driver = scene.driver()
    driver.ensure_vlan_gateway(VLAN_A, GW_A)
    wanted = {scene.public(10 + i): f"198.19.3.{10 + i}" for i in range(40)}
    driver.publish(scene.public(10), A1)  # published elsewhere before: remapped by the batch
    sessions = scene.switch.ssh_sessions()
    driver.publish_many(wanted)
    assert lab_switch.published_on_switch(scene.switch) == wanted
    driver.publish_many(wanted)  # idempotent
    assert scene.switch.ssh_sessions() - sessions == 2
    driver.withdraw_many([*wanted, scene.public(99)])  # one never published: nothing to do for it
    assert lab_switch.published_on_switch(scene.switch) == {}
    assert scene.switch.ssh_sessions() - sessions == 3


def test_publish_again_moves_the_address_to_the_new_server(scene: Scene) -> None:
    driver = scene.driver()
    driver.ensure_vlan_gateway(VLAN_A, GW_A)
    public = scene.public(6)
    listener = scene.listen("a2", 2223)
    try:
        driver.publish(public, A1)
        driver.publish(public, A2)
        assert lab_switch.published_on_switch(scene.switch) == {public: A2}
        said = _connect_from_host(public, 2223)
        assert said is not None and said.startswith("a2 ")
    finally:
        driver.withdraw(public)
        listener.kill()
        listener.wait()


def test_routing_state_reads_what_the_switch_holds_and_save_keeps_it(scene: Scene) -> None:
    driver = scene.driver()
    driver.ensure_vlan_gateway(VLAN_A, GW_A)
    driver.publish(scene.public(7), A2)
    try:
        state = driver.routing_state()
        assert state == RoutingState(
            gateways=lab_switch.gateways_on_switch(scene.switch),
            published=lab_switch.published_on_switch(scene.switch),
        )
        assert state.published[scene.public(7)] == A2
        ruleset = lab_switch.nft_ruleset(scene.switch)
        assert f"{scene.public(7)} : {A2}" in ruleset and "policy drop" in ruleset
        driver.save()
        saved = scene.switch.saved_config.read_text().splitlines()
        assert f"ip addr replace {GW_A} dev br{VLAN_A}" in saved
        assert f"nft add element inet neocloud publish {{ {scene.public(7)} : {A2} }}" in saved
        assert "ip link set swp1 master br1000" in saved
    finally:
        driver.withdraw(scene.public(7))


def test_a_gateway_changes_and_goes(scene: Scene) -> None:
    driver = scene.driver()
    vlan = 1050
    driver.ensure_vlan_gateway(vlan, "198.19.50.1/24")
    driver.ensure_vlan_gateway(vlan, "198.19.51.1/24")  # replaced, not added
    assert lab_switch.gateways_on_switch(scene.switch)[vlan] == "198.19.51.1/24"
    driver.remove_vlan_gateway(vlan)
    driver.remove_vlan_gateway(vlan)  # idempotent
    assert vlan not in lab_switch.gateways_on_switch(scene.switch)
    assert vlan not in driver.routing_state().gateways


def test_bad_routing_input_is_one_sentence_and_changes_nothing(scene: Scene) -> None:
    driver = scene.driver()
    before = (lab_switch.gateways_on_switch(scene.switch), lab_switch.published_on_switch(scene.switch))
    with pytest.raises(InvalidRequest, match=r"gateway '198.19.9.0/24' is not a host address"):
        driver.ensure_vlan_gateway(1060, "198.19.9.0/24")
    with pytest.raises(InvalidRequest, match=r"gateway '198.19.9.1' is not a host address"):
        driver.ensure_vlan_gateway(1060, "198.19.9.1")
    with pytest.raises(InvalidRequest, match=r"public address 'nowhere' is not an IPv4 address"):
        driver.publish("nowhere", A1)
    with pytest.raises(InvalidRequest, match=r"has no VLAN gateway whose network holds 198.19.99.2"):
        driver.publish(scene.public(8), "198.19.99.2")
    assert (
        lab_switch.gateways_on_switch(scene.switch),
        lab_switch.published_on_switch(scene.switch),
    ) == before


def test_the_switch_management_sshd_still_answers_from_the_host(scene: Scene) -> None:
    # the base ruleset lets the management network in: the driver's own logins prove it, timed here
    started = time.monotonic()
    assert scene.driver().port_state("swp1").vlan == VLAN_A
    assert time.monotonic() - started < 15


def test_joining_and_leaving_tenant_networks_is_one_session_each(scene: Scene) -> None:
    """A handover's batch: gateway, published address and port move in one session (one read, the changes,
    one read back), as the switch's own state and a ping show; an unknown port changes nothing. A release's
    batch: the address withdrawn and the port moved off in one session."""
    driver = scene.driver()
    driver.set_access_vlans({"swp2": 4000})  # a2 off its VLAN, as on the provisioning network
    assert not scene.ping("a1", A2)
    public = scene.public(40)
    with pytest.raises(UnknownSwitchPort, match="swp99"):
        driver.join_tenant_networks({VLAN_A: GW_A}, {public: A2}, {"swp2": VLAN_A, "swp99": VLAN_A})
    assert public not in lab_switch.published_on_switch(scene.switch)
    assert lab_switch.bridge_link(scene.switch)["swp2"] == "br4000"
    sessions = scene.switch.ssh_sessions()
    driver.join_tenant_networks({VLAN_A: GW_A}, {public: A2}, {"swp2": VLAN_A})
    driver.join_tenant_networks({VLAN_A: GW_A}, {public: A2}, {"swp2": VLAN_A})  # idempotent
    assert scene.switch.ssh_sessions() - sessions == 2
    assert lab_switch.bridge_link(scene.switch)["swp2"] == f"br{VLAN_A}"
    assert lab_switch.gateways_on_switch(scene.switch)[VLAN_A] == GW_A
    assert lab_switch.published_on_switch(scene.switch)[public] == A2
    assert scene.ping("a1", A2)
    # the release's batch: withdrawn and moved off in one session
    sessions = scene.switch.ssh_sessions()
    driver.leave_tenant_networks([public], {"swp2": 4000})
    driver.leave_tenant_networks([public], {"swp2": 4000})  # idempotent
    assert scene.switch.ssh_sessions() - sessions == 2
    assert public not in lab_switch.published_on_switch(scene.switch)
    assert lab_switch.bridge_link(scene.switch)["swp2"] == "br4000"
    assert not scene.ping("a1", A2)
    driver.set_access_vlans({"swp2": VLAN_A})
