"""Tenant isolation with real packets in the switched lab (lab.switched), driven by the Linux switch driver.

One switched lab per module, built by lab.switched with a topology of its own (switch ``ncsw-s<hex>``,
servers ``nctest-<hex>-*`` at 198.19.2xx.y, a public /24 and uplink of their own) so that it runs beside a
lab on 198.18.x.y. Four servers boot their OS (lab.sshd: a real sshd, the config drive's private_network
applied at boot) on the provisioning VLAN; then, as handover does, the driver moves tenant A's two servers
to VLAN 1000 and tenant B's to VLAN 1001, gives each VLAN its gateway and publishes A1. p1 stays on the
provisioning VLAN. The host end of the provisioning uplink carries 198.18.0.1, where the servers reach the
lab image server (a real one on loopback, started here) through the lab's provisioning relay, as in the lab.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import netns, sshd, supervisor, switched
from lab import switch as lab_switch
from lab.spec import LabNodeSpec
from provisioner.drivers.switch import LinuxSwitchDriver, SwitchAccess
from provisioner.pxe.imageserver import ImageServer
from provisioner.sshkeys import generate_keypair
from tests.conftest import wait_for

pytestmark = [pytest.mark.lab]

VLAN_A, VLAN_B = 1000, 1001
NET_A, NET_B = switched.private_network_of(VLAN_A), switched.private_network_of(VLAN_B)
PRIVATE = {"a1": NET_A[2], "a2": NET_A[3], "b1": NET_B[2]}
VLAN_OF = {"a1": VLAN_A, "a2": VLAN_A, "b1": VLAN_B}
BOOT_SERVICE = netns.GATEWAY_ADDRESS


def _lab_missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not lab_switch.tools_available() or not shutil.which("ping") or not shutil.which("ssh"):
        return "openssh, iproute2 or iputils-ping is not installed"
    if not os.path.exists(lab_switch.NFT):
        return "nftables is not installed"
    return ""


class SwitchedLab:
    def __init__(
        self,
        switch: lab_switch.LabSwitch,
        specs: dict[str, LabNodeSpec],
        key: Path,
        public_prefix: str,
        ports: dict[str, int],
    ) -> None:
        self.switch, self.specs, self.key, self.public_prefix, self.ports = (
            switch,
            specs,
            key,
            public_prefix,
            ports,
        )

    def driver(self) -> LinuxSwitchDriver:
        return LinuxSwitchDriver(
            SwitchAccess(
                name=self.switch.name, driver="linux", address=self.switch.address, port=22,
                username="root", private_key=self.switch.private_key,
            )
        )  # fmt: skip

    def public(self, host: int) -> str:
        return f"{self.public_prefix}.{host}"

    def _in(self, server: str, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.specs[server].netns, *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def ping(self, server: str, address: object) -> bool:
        return self._in(server, ["ping", "-c", "1", "-W", "1", str(address)]).returncode == 0

    def tcp(self, server: str, address: object, port: int) -> bool:
        code = (
            "import socket,sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"
        )
        return self._in(server, [sys.executable, "-c", code, str(address), str(port)]).returncode == 0

    def ssh_argv(self, address: object) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR",
            f"root@{address}", "hostname",
        ]  # fmt: skip

    def ssh_from(self, server: str, address: object) -> str | None:
        """A real login from inside ``server``: the host name the other server's shell prints."""
        proc = self._in(server, self.ssh_argv(address), timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def ssh_from_host(self, address: object) -> str | None:
        proc = subprocess.run(self.ssh_argv(address), capture_output=True, text=True, timeout=30, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None


def _document(name: str, public_key: str, private: Any) -> dict[str, Any]:
    host_private, host_public = generate_keypair("ed25519", f"root@{name}")
    doc: dict[str, Any] = {
        "hostname": name,
        "authorized_keys": [public_key],
        "host_keys": {"ssh-ed25519": {"private": host_private, "public": host_public}},
    }
    if private is not None:
        network = NET_A if private in NET_A else NET_B
        doc["private_network"] = {"address": str(private), "prefix": 24, "gateway": str(network[1])}
    return doc


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchedLab]:
    if _lab_missing():
        pytest.skip(_lab_missing())
    tag = secrets.token_hex(3)
    lab_dir = tmp_path_factory.mktemp("switched")
    transit = 4 * secrets.randbelow(63)
    public = f"198.19.{secrets.randbelow(60) + 130}"
    third = secrets.randbelow(30) + 200  # management and provisioning addresses, outside 198.19.0.0/17
    topology = switched.Topology(
        switch_name=f"s{tag}",
        switch_address=f"198.19.{third}.250",
        public_network=f"{public}.0/24",
        public_uplink_host=f"198.19.253.{transit + 1}",
        public_uplink_switch=f"198.19.253.{transit + 2}",
    )
    specs = {
        name: LabNodeSpec(
            name=f"{name}-{tag}",
            index=i,
            server_type="h100-8x",
            mac=f"02:00:00:00:00:0{i}",
            bmc_protocol="ipmi",
            bmc_address="127.0.10.1",
            bmc_port=623,
            bmc_username="admin",
            bmc_password="unused",
            ssh_address=f"198.19.{third}.{10 + i}",
            netns=f"nctest-{tag}-{name}",
            switch_name=topology.switch_name,
            switch_port=f"swp{i}",
        )
        for i, name in enumerate(["a1", "a2", "b1", "p1"], start=1)
    }
    key = lab_dir / "customer_key"
    private_key, public_key = generate_keypair("ed25519", "customer")
    key.write_text(private_key)
    key.chmod(0o600)
    stack = contextlib.ExitStack()
    try:
        switch = switched.start(lab_dir, list(specs.values()), topology)
        for name, spec in specs.items():
            sshd.start_node_os(spec, _document(spec.name, public_key, PRIVATE.get(name)), lab_dir)
        # the lab's image server on loopback, reached by the servers at 198.18.0.1 through the lab's own relay
        (lab_dir / "images").mkdir()
        (lab_dir / "images" / "hello.img").write_bytes(b"an image")
        image_server = stack.enter_context(ImageServer(lab_dir / "images"))
        ports = {"image": image_server.port}
        supervisor.start_relay(lab_dir, list(ports.values()))
        # handover, as the lifecycle does it: the tenant VLANs' gateways, the ports, the public address
        driver = LinuxSwitchDriver(
            SwitchAccess(name=switch.name, driver="linux", address=switch.address, port=22,
                         username="root", private_key=switch.private_key)
        )  # fmt: skip
        with driver:
            driver.ensure_vlan_gateway(VLAN_A, f"{NET_A[1]}/24")
            driver.ensure_vlan_gateway(VLAN_B, f"{NET_B[1]}/24")
            driver.set_access_vlans({specs[n].switch_port: VLAN_OF[n] for n in PRIVATE})
            driver.publish(f"{public}.11", str(PRIVATE["a1"]))
        yield SwitchedLab(switch, specs, key, public, ports)
    finally:
        supervisor.stop_relay(lab_dir)
        stack.close()
        for spec in specs.values():
            sshd.stop_node_os(spec, lab_dir)
        switched.stop(lab_dir, topology)
        for spec in specs.values():
            lab_switch.destroy_server_namespace(spec.netns)


def test_the_servers_of_one_tenant_reach_each_other_on_their_private_network(lab: SwitchedLab) -> None:
    assert lab.ping("a1", PRIVATE["a2"])
    assert lab.ping("a2", PRIVATE["a1"])
    assert lab.ssh_from("a1", PRIVATE["a2"]) == lab.specs["a2"].name  # a real login on a2's sshd
    assert lab.ping("a1", NET_A[1])  # its own gateway answers a ping


def test_nothing_else_answers_a_tenant_server(lab: SwitchedLab) -> None:
    b1, p1 = lab.specs["b1"], lab.specs["p1"]
    for target in (PRIVATE["b1"], b1.ssh_address, p1.ssh_address, BOOT_SERVICE, lab.switch.address, NET_B[1]):
        assert not lab.ping("a1", target), target
    assert not lab.tcp("a1", PRIVATE["b1"], 22)
    assert lab.ssh_from("a1", PRIVATE["b1"]) is None
    assert not lab.tcp("a1", BOOT_SERVICE, lab.ports["image"])
    assert not lab.tcp("a1", lab.switch.address, 22)
    assert not lab.tcp("a1", NET_A[1], 22)  # the switch's address on a1's own VLAN: ping only
    assert not lab.tcp("b1", PRIVATE["a1"], 22)
    assert not lab.tcp("a1", lab.public(11), 22)  # not even through a public address


def test_a_server_on_the_provisioning_vlan_reaches_the_boot_services_and_no_tenant(lab: SwitchedLab) -> None:
    assert lab.ping("p1", BOOT_SERVICE)
    fetched = lab._in("p1", [sys.executable, "-c", "import sys,urllib.request;print(urllib.request.urlopen("
                              f"'http://{BOOT_SERVICE}:{lab.ports['image']}/hello.img', timeout=5).read())"])  # fmt: skip
    assert fetched.stdout.strip() == "b'an image'"
    for target in (PRIVATE["a1"], PRIVATE["b1"], lab.specs["a1"].ssh_address, NET_A[1], lab.public(11)):
        assert not lab.ping("p1", target), target
    assert not lab.tcp("p1", PRIVATE["a1"], 22)
    assert not lab.tcp("p1", lab.specs["a1"].ssh_address, 22)


def test_the_customer_logs_in_through_the_public_address_until_it_is_withdrawn(lab: SwitchedLab) -> None:
    public = lab.public(11)
    assert lab.ssh_from_host(public) == lab.specs["a1"].name
    lab.driver().withdraw(public)
    try:
        assert lab.ssh_from_host(public) is None
        assert not lab.tcp("p1", public, 22)
    finally:
        lab.driver().publish(public, str(PRIVATE["a1"]))
    assert lab.ssh_from_host(public) == lab.specs["a1"].name


def test_the_switch_itself_agrees_with_what_the_driver_reads(lab: SwitchedLab) -> None:
    ports = {name: spec.switch_port for name, spec in lab.specs.items()}
    states = lab.driver().port_states(ports.values())
    shown = lab_switch.bridge_link(lab.switch)
    assert {p: f"br{s.vlan}" for p, s in states.items()} == {p: shown[p] for p in ports.values()}
    assert shown[ports["a1"]] == shown[ports["a2"]] == f"br{VLAN_A}"
    assert shown[ports["b1"]] == f"br{VLAN_B}" and shown[ports["p1"]] == f"br{switched.PROVISIONING_VLAN}"
    assert shown[lab_switch.HOST_UPLINK] == f"br{switched.PROVISIONING_VLAN}"
    routing = lab.driver().routing_state()
    assert routing.gateways == lab_switch.gateways_on_switch(lab.switch)
    assert routing.gateways == {VLAN_A: f"{NET_A[1]}/24", VLAN_B: f"{NET_B[1]}/24"}
    assert (
        routing.published
        == lab_switch.published_on_switch(lab.switch)
        == {lab.public(11): str(PRIVATE["a1"])}
    )
    assert f"{lab.public(11)} : {PRIVATE['a1']}" in lab_switch.nft_ruleset(lab.switch)


def test_lab_up_again_leaves_a_running_server_on_its_vlan_with_its_private_network(lab: SwitchedLab) -> None:
    spec = lab.specs["a2"]
    switched.connect_node(spec)  # what `lab up` does again for every node of a running lab
    assert lab_switch.bridge_link(lab.switch)[spec.switch_port] == f"br{VLAN_A}"
    assert lab.ssh_from("a2", PRIVATE["a1"]) == lab.specs["a1"].name
    assert lab.ssh_from_host(lab.public(11)) == lab.specs["a1"].name


def test_a_server_on_the_quarantine_vlan_reaches_nothing(lab: SwitchedLab) -> None:
    p1 = lab.specs["p1"]
    with lab.driver() as driver:
        driver.set_access_vlans({p1.switch_port: switched.QUARANTINE_VLAN})
    try:
        assert lab_switch.bridge_link(lab.switch)[p1.switch_port] == f"br{switched.QUARANTINE_VLAN}"
        a1 = lab.specs["a1"]
        for target in (
            BOOT_SERVICE,
            PRIVATE["a1"],
            a1.ssh_address,
            lab.switch.address,
            NET_A[1],
            lab.public(11),
        ):
            assert not lab.ping("p1", target), target
        assert not lab.tcp("p1", BOOT_SERVICE, lab.ports["image"])
        assert not lab.tcp("p1", lab.switch.address, 22)
        assert not lab.tcp("p1", lab.public(11), 22)
    finally:
        with lab.driver() as driver:
            driver.set_access_vlans({p1.switch_port: switched.PROVISIONING_VLAN})
    # back on the provisioning VLAN: reachable again once the server's neighbour entry for 198.18.0.1, which
    # failed on the quarantine VLAN, resolves anew (a SYN or two under load)
    wait_for(
        lambda: lab.tcp("p1", BOOT_SERVICE, lab.ports["image"]), 15, interval=0.5,
        message="the image server at 198.18.0.1 from p1 back on the provisioning VLAN",
    )  # fmt: skip
