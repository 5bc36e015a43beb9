"""The switched lab topology (``lab up --switch``): every lab server cabled to one lab switch, as on a site.

Unswitched (the default, lab.netns), each server's ``eth0`` is a veth straight to the host. Switched, it is a
veth into port ``swp<index>`` of the lab switch ``lab-leaf1`` (lab.switch: namespace ``ncsw-lab-leaf1``, a
bridge per VLAN, a real sshd the Linux switch driver logs into, lldpd), and the switch's VLANs decide what a
server reaches:

* VLAN 100, provisioning and cleaning (one VLAN for both): the host is cabled into it by an uplink veth
  (``host0`` on ``br100``) whose host end carries 198.18.0.1/32, the address the servers' boot service and
  image server are reached at, with one host route per server address over it;
* VLAN 4000, quarantine: a bridge with nothing else on it;
* tenant VLANs 1000-1099, each a /24 of the tenant supernet 198.19.0.0/17 with its gateway on the switch
  (the driver's ``ensure_vlan_gateway``);
* the public range 198.19.254.0/24, routed by the host to the switch's public uplink (``pub0``,
  198.18.254.2/30; the host end 198.18.254.1/30), where the switch DNATs each published address to one
  tenant server (the driver's ``publish``).

The switch's management address, 198.18.255.1, is outside the servers' 198.18.0.2-198.18.0.201.
Nothing here imports Django; the lab command registers the switch (lab/management/commands/lab.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import time
from pathlib import Path

from lab import netns
from lab import switch as lab_switch
from lab.spec import LabNodeSpec

SWITCH_NAME = "lab-leaf1"
SWITCH_ADDRESS = "198.18.255.1"
PROVISIONING_VLAN = 100
CLEANING_VLAN = 100  # the same VLAN as provisioning: a wiped server needs what a deployed one needs
QUARANTINE_VLAN = 4000
TENANT_VLANS = (1000, 1099)  # inclusive
TENANT_SUPERNET = "198.19.0.0/17"  # a /24 per tenant network
TENANT_PREFIX = 24
PUBLIC_NETWORK = "198.19.254.0/24"
PUBLIC_UPLINK_HOST = "198.18.254.1"
PUBLIC_UPLINK_SWITCH = "198.18.254.2"
PUBLIC_UPLINK_PREFIX = 30
# the emulated computers' DHCP service (start_pxe_service): on VLAN 100, beside the servers' .2-.201
PROVISIONING_SUBNET = "198.18.0.0/24"
DHCP_PORT = "swp0"
DHCP_ADDRESS = "198.18.0.250"
DHCP_RANGE = ("198.18.0.202", "198.18.0.249")  # unknown MACs; a lab server's MAC gets its own address


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where the switched lab's pieces are: the lab's own (``LAB``), or a test's (another switch name,
    management address, public range and uplink, so that it runs beside whatever else uses the host)."""

    switch_name: str = SWITCH_NAME
    switch_address: str = SWITCH_ADDRESS
    public_network: str = PUBLIC_NETWORK
    public_uplink_host: str = PUBLIC_UPLINK_HOST
    public_uplink_switch: str = PUBLIC_UPLINK_SWITCH
    public_uplink_prefix: int = PUBLIC_UPLINK_PREFIX


LAB = Topology()


def site_network() -> dict[str, object]:
    """The lab site's ``network:`` block of the inventory YAML (provisioner.services.inventory)."""
    return {
        "provisioning_vlan": PROVISIONING_VLAN,
        "cleaning_vlan": CLEANING_VLAN,
        "quarantine_vlan": QUARANTINE_VLAN,
        "tenant_vlans": f"{TENANT_VLANS[0]}-{TENANT_VLANS[1]}",
        "tenant_supernet": TENANT_SUPERNET,
        "tenant_prefix": TENANT_PREFIX,
        "public_range": PUBLIC_NETWORK,
    }


def switch_directory(lab_dir: Path) -> Path:
    return Path(lab_dir) / "switch"


def port_for(index: int) -> str:
    return f"swp{index}"


def running_switch(lab_dir: Path, topology: Topology = LAB) -> lab_switch.LabSwitch | None:
    """The lab's switch when it runs (its namespace exists and its key is on disk), else None."""
    directory = switch_directory(lab_dir)
    key = directory / "login_key"
    if not netns.namespace_exists(lab_switch.NETNS_PREFIX + topology.switch_name) or not key.exists():
        return None
    return lab_switch.LabSwitch(
        name=topology.switch_name,
        address=topology.switch_address,
        directory=directory,
        private_key=key.read_text(),
        lldp=lab_switch.lldpd_available(),
    )


def start(lab_dir: Path, specs: list[LabNodeSpec], topology: Topology = LAB) -> lab_switch.LabSwitch:
    """Start the lab switch (or keep the running one), its uplinks and VLANs, and cable every server of
    ``specs`` to its port on the provisioning VLAN (a port already cabled keeps its VLAN). Idempotent.

    :raises lab.switch.LabSwitchError, lab.netns.LabNetworkError: a piece could not be made.
    """
    switch = running_switch(lab_dir, topology)
    if switch is None or not _sshd_answers(switch):
        switch = lab_switch.start_switch(
            topology.switch_name, topology.switch_address, switch_directory(lab_dir)
        )
    lab_switch.add_host_uplink(switch, PROVISIONING_VLAN)
    lab_switch.ensure_vlan(switch, QUARANTINE_VLAN)
    lab_switch.add_public_uplink(
        switch,
        topology.public_uplink_host,
        topology.public_uplink_switch,
        topology.public_uplink_prefix,
        topology.public_network,
    )
    for spec in specs:
        connect_node(spec, switch)
    return switch


def pxe_namespace(topology: Topology = LAB) -> str:
    return f"{lab_switch.NETNS_PREFIX}{topology.switch_name}-dhcp"


def start_pxe_service(
    lab_dir: Path, specs: list[LabNodeSpec], boot_url: str, topology: Topology = LAB, timeout: float = 10.0
) -> None:
    """DHCP for network boot on the provisioning VLAN, for the emulated computers cabled to the switch: Debian's
    dnsmasq in a namespace of its own, cabled to port ``swp0`` on VLAN 100 at ``DHCP_ADDRESS``/24, with the
    configuration the product writes for a site (provisioner.pxe.dnsmasq, ``dhcp`` mode): each emulated
    server's MAC pinned to its address, 198.18.0.1 as router, iPXE pointed at ``boot_url`` (the boot service
    at 198.18.0.1, relayed by lab.provisioning_relay), TFTP on for plain PXE ROMs (an empty root: the lab's
    ROM is iPXE already). dnsmasq serves nothing else (no DNS) and listens only in that namespace. Restarted
    with the current configuration on every call.

    :raises lab.switch.LabSwitchError: the switch is not running, or dnsmasq did not start.
    """
    from provisioner.pxe.dnsmasq import DhcpHost, DnsmasqConfigError, DnsmasqSite, write_dnsmasq_config

    switch = running_switch(lab_dir, topology)
    if switch is None:
        raise lab_switch.LabSwitchError(f"lab switch {topology.switch_name} is not running")
    namespace = pxe_namespace(topology)
    directory = switch_directory(lab_dir) / "dhcp"
    (directory / "tftp").mkdir(parents=True, exist_ok=True)
    lab_switch.destroy_server_namespace(namespace)  # dnsmasq and its cable go; a fresh one follows
    _run(["ip", "-n", switch.netns, "link", "del", DHCP_PORT])
    lab_switch.create_server_namespace(namespace)
    lab_switch.add_port(
        switch,
        DHCP_PORT,
        namespace,
        peer_interface=netns.NODE_INTERFACE,
        peer_address=f"{DHCP_ADDRESS}/{PROVISIONING_SUBNET.split('/')[1]}",
        vlan=PROVISIONING_VLAN,
    )
    site = DnsmasqSite(
        subnet=PROVISIONING_SUBNET,
        boot_url=boot_url,
        tftp_root=str(directory / "tftp"),
        interface=netns.NODE_INTERFACE,
        mode="dhcp",
        dhcp_range=DHCP_RANGE,
        router=netns.GATEWAY_ADDRESS,
        hosts=[DhcpHost(s.mac, s.name, s.ssh_address) for s in specs if s.kind == "qemu"],
    )
    try:
        config = write_dnsmasq_config(site, directory / "dnsmasq.conf")
    except DnsmasqConfigError as exc:
        raise lab_switch.LabSwitchError(f"the lab's DHCP service: {exc}") from None
    log_path = directory / "dnsmasq.log"
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [
                "ip", "netns", "exec", namespace, "dnsmasq", "--keep-in-foreground", f"--conf-file={config}",
                f"--dhcp-leasefile={directory / 'leases'}", f"--pid-file={directory / 'dnsmasq.pid'}",
                "--user=root", "--log-facility=-",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while ":67 " not in _run(["ip", "netns", "exec", namespace, "ss", "-ulnH"]).stdout:
        if time.monotonic() > deadline:
            raise lab_switch.LabSwitchError(f"the lab's DHCP service did not start; see {log_path}")
        time.sleep(0.1)


def _sshd_answers(switch: lab_switch.LabSwitch) -> bool:
    from lab import sshd

    return sshd.wait_for_port(switch.address, lab_switch.SSH_PORT, 1.0)


def connect_computer(spec: LabNodeSpec, switch: lab_switch.LabSwitch | None = None) -> None:
    """Cable an emulated computer: a tap ``spec.switch_port`` in the switch on the provisioning VLAN (QEMU opens
    it at power-on, lab.qemu_firmware), and the host's route to its address over the provisioning uplink (the
    guest takes that address by DHCP, ``start_pxe_service``). Idempotent: a cabled port keeps its VLAN.

    :raises lab.netns.LabNetworkError: the lab switch is not running.
    """
    if switch is None:
        switch = _switch_of(spec)
    lab_switch.add_tap_port(switch, spec.switch_port, PROVISIONING_VLAN)
    lab_switch.route_host_to(switch, spec.ssh_address)


def connect_node(spec: LabNodeSpec, switch: lab_switch.LabSwitch | None = None) -> None:
    """Make (or complete) a switched server's network: its namespace, its cable into ``spec.switch_port``
    (a new cable lands on the provisioning VLAN, with ``spec.ssh_address``/32 on eth0 and 198.18.0.1 on
    link as default gateway), and the host's route to it over the provisioning uplink. Idempotent: a server
    already cabled keeps its port's VLAN and its addresses (``lab up`` again leaves running servers alone).

    :raises lab.netns.LabNetworkError: the lab switch is not running.
    """
    if not spec.switch_port or not spec.netns or not spec.ssh_address:
        raise netns.LabNetworkError(
            f"lab node {spec.name} has no switch port, namespace or address in its spec"
        )
    if switch is None:
        switch = _switch_of(spec)
    if spec.kind == "qemu":
        connect_computer(spec, switch)
        return
    if not netns.namespace_exists(spec.netns):
        lab_switch.create_server_namespace(spec.netns)
    has_cable = _run(["ip", "-n", switch.netns, "link", "show", "dev", spec.switch_port]).returncode == 0
    if not has_cable:
        # an eth0 left from the unswitched lab is a cable to the host: unplug it first
        _run(["ip", "-n", spec.netns, "link", "del", netns.NODE_INTERFACE])
        lab_switch.add_port(
            switch,
            spec.switch_port,
            spec.netns,
            peer_interface=netns.NODE_INTERFACE,
            vlan=PROVISIONING_VLAN,
        )
        netns.configure_node_end(spec.netns, spec.ssh_address)
    lab_switch.route_host_to(switch, spec.ssh_address)


def boot_network(spec: LabNodeSpec) -> None:
    """A switched server's network as its OS boots: ``connect_node`` from a bare eth0 (the addresses of an
    earlier boot, a tenant address among them, are gone). Idempotent.

    :raises lab.netns.LabNetworkError: the lab switch is not running.
    """
    connect_node(spec)
    _run(["ip", "-n", spec.netns, "addr", "flush", "dev", netns.NODE_INTERFACE])
    netns.configure_node_end(spec.netns, spec.ssh_address)


def _switch_of(spec: LabNodeSpec) -> lab_switch.LabSwitch:
    # Cabling needs only the switch's namespace: a handle without its login (none is needed here).
    if not netns.namespace_exists(lab_switch.NETNS_PREFIX + spec.switch_name):
        raise netns.LabNetworkError(
            f"lab node {spec.name} is cabled to switch {spec.switch_name}, which is not running: "
            "start the lab with --switch"
        )
    return lab_switch.LabSwitch(name=spec.switch_name, address="", directory=Path(), private_key="")


def stop(lab_dir: Path, topology: Topology = LAB) -> None:
    """Stop the lab switch (its ports, both ends, and uplinks go with it) and its DHCP service. Idempotent."""
    lab_switch.stop_switch_named(topology.switch_name)
    lab_switch.destroy_server_namespace(pxe_namespace(topology))


def private_network_of(vlan: int) -> ipaddress.IPv4Network:
    """The tenant network of a VLAN of the lab's pool: the (vlan - 1000)th /24 of the tenant supernet."""
    first, last = TENANT_VLANS
    if not first <= vlan <= last:
        raise ValueError(f"VLAN {vlan} is not in the lab's tenant pool {first}-{last}")
    return list(ipaddress.IPv4Network(TENANT_SUPERNET).subnets(new_prefix=TENANT_PREFIX))[vlan - first]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
