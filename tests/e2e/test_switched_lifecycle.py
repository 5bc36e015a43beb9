"""The whole lifecycle in the switched lab (``lab up --switch``): two organizations reserve two servers each;
the engine's network steps move the real lab switch's ports through the Linux switch driver; the packets
between the servers, and the switch's own state, say where each server is. Then one reservation is released
and the switch is watched while its servers are wiped: each port is on the cleaning VLAN before its disk is
touched."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lab import switch as lab_switch
from lab import switched
from lab.images import IMAGE_NAME, IMAGE_SERVER_PORT
from provisioner import crypto, hardware
from provisioner.handover import SshAuthFailed, run_command
from provisioner.lifecycle import Actor
from provisioner.models import Image, LogLine, NetworkAttachment, Node, Operation, ServerType
from provisioner.services.reservations import book_servers, release_reservation
from provisioner.states import NodeState, ReservationState
from tests.conftest import wait_for
from tests.e2e.conftest import wait_reservation_state

pytestmark = [pytest.mark.lab, pytest.mark.slow]
TIMEOUT = 600


@contextlib.contextmanager
def _switched_lab(nodes: int, boot_url: str):
    from lab.management.commands.lab import start_lab, stop_lab

    try:
        yield {s.name: s for s in start_lab(nodes, boot_url=boot_url, switch=True)}
    finally:
        stop_lab()


@pytest.fixture
def switched_lab(lab_workers, live_server, settings):
    with _switched_lab(4, live_server.url) as specs:
        yield specs


def _reserve(customer, count):
    return book_servers(
        customer["org"],
        ServerType.objects.get(slug="h100-8x"),
        count,
        image=Image.objects.get(slug="neocloud-demo-linux"),
        ssh_keys=[customer["key"]],
        actor=Actor(user=customer["user"], label=customer["user"].username),
    ).reservation


def _in(netns: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30, check=False
    )


def _ping(netns: str, address: str) -> bool:
    return _in(netns, ["ping", "-c", "1", "-W", "1", address]).returncode == 0


_HTTP_STATUS = """
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("none")
"""


def _provisioning_services(netns: str, boot_url: str) -> dict[str, str]:
    """What answers a GET from inside the server at 198.18.0.1: the boot service (an unknown MAC's boot
    script is its 404) and the lab image server (the demo image), each an HTTP status or "none"."""
    boot_port = urlsplit(boot_url).port
    urls = {
        "boot": f"http://198.18.0.1:{boot_port}/boot/02-00-00-00-00-99.ipxe",
        "image": f"http://198.18.0.1:{IMAGE_SERVER_PORT}/{IMAGE_NAME}",
    }
    return {
        name: _in(netns, [sys.executable, "-c", _HTTP_STATUS, url]).stdout.strip()
        for name, url in urls.items()
    }


def _ssh(key: Path, address: str) -> list[str]:
    return [
        "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR",
        f"root@{address}", "hostname",
    ]  # fmt: skip


def _login_from(netns: str, key: Path, address: str) -> str | None:
    proc = _in(netns, _ssh(key, address))
    return proc.stdout.strip() if proc.returncode == 0 else None


def _login_from_host(key: Path, address: str) -> str | None:
    proc = subprocess.run(_ssh(key, address), capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _network_dump(switch, specs) -> str:
    """What the switch and each server hold now (for a failure's message)."""
    out = [lab_switch.nft_ruleset(switch), str(lab_switch.bridge_link(switch))]
    for argv in (["ip", "route"], ["ip", "neigh"], ["ip", "-br", "addr"]):
        out.append(subprocess.run(argv, capture_output=True, text=True, check=False).stdout)
    for spec in specs.values():
        for argv in (["ip", "-br", "addr"], ["ip", "route"], ["ip", "neigh"], ["ss", "-tlnp"]):
            out.append(f"{spec.name} {' '.join(argv)}: " + _in(spec.netns, argv).stdout)
    return "\n".join(out)


def _wiped(disk: str) -> bool:
    with open(disk, "rb") as fh:
        return not any(fh.read(1024 * 1024))


def test_two_organizations_get_isolated_networks_and_release_moves_ports_before_the_wipe(
    switched_lab, lab_workers, customers, settings, tmp_path
):
    lab_dir = Path(settings.NEOCLOUD_LAB_DIR)
    switch = switched.running_switch(lab_dir)
    assert switch is not None
    keys = {}
    for who in ("acme", "globex"):
        keys[who] = tmp_path / f"{who}.key"
        keys[who].write_text(customers[who]["private"])
        keys[who].chmod(0o600)
    lab_workers.worker()
    lab_workers.worker()
    lab_workers.scheduler()
    acme = _reserve(customers["acme"], 2)
    globex = _reserve(customers["globex"], 2)
    try:
        wait_reservation_state(acme, ReservationState.ACTIVE, lab_workers, TIMEOUT)
        wait_reservation_state(globex, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_network_dump(switch, switched_lab)}") from None

    servers = {}
    for reservation, who in ((acme, "acme"), (globex, "globex")):
        nodes = sorted(Node.objects.filter(reservation=reservation), key=lambda n: n.name)
        for i, node in enumerate(nodes, start=1):
            attachment = NetworkAttachment.objects.live().select_related("network").get(node=node)
            servers[f"{who}{i}"] = (node, switched_lab[node.name], attachment)
    # each deploy checked its cabling by LLDP: the lab switch's lldpd, heard on the server's own NIC
    for node, spec, _attachment in servers.values():
        heard = LogLine.objects.filter(operation__node=node, message__startswith="LLDP on eth0:")
        assert [line.message for line in heard] == [
            f"LLDP on eth0: switch {switch.name} port {spec.switch_port}"
        ], list(LogLine.objects.filter(operation__node=node).values_list("message", flat=True))
    acme_vlan, globex_vlan = servers["acme1"][2].network.vlan, servers["globex1"][2].network.vlan
    assert acme_vlan != globex_vlan and servers["acme2"][2].network.vlan == acme_vlan

    # the switch itself: each server's port on its tenant's VLAN, each VLAN's gateway, each public address
    shown = lab_switch.bridge_link(switch)
    for _node, spec, attachment in servers.values():
        assert shown[spec.switch_port] == f"br{attachment.network.vlan}"
    published = lab_switch.published_on_switch(switch)
    assert {a.public_address: a.private_address for _n, _s, a in servers.values()} == published
    gateways = lab_switch.gateways_on_switch(switch)
    assert gateways[acme_vlan] == servers["acme1"][2].network.gateway_cidr

    # packets: acme's servers reach each other (a real login on the private network), nothing else
    a1, a2, g1 = servers["acme1"], servers["acme2"], servers["globex1"]
    assert _ping(a1[1].netns, a2[2].private_address)
    assert _login_from(a1[1].netns, keys["acme"], a2[2].private_address) == a2[0].name
    for target in (g1[2].private_address, g1[0].ssh_address, "198.18.0.1", switched.SWITCH_ADDRESS):
        assert not _ping(a1[1].netns, target), target
    assert _login_from(a1[1].netns, keys["acme"], switched.SWITCH_ADDRESS) is None
    # the boot service and the image server that deployed it (over 198.18.0.1 on VLAN 100) are out of reach
    assert _provisioning_services(a1[1].netns, settings.NEOCLOUD_BOOT_URL) == {
        "boot": "none",
        "image": "none",
    }
    assert _login_from(g1[1].netns, keys["globex"], a1[2].private_address) is None
    # the customer logs in from outside through the public address, with their key only
    assert _login_from_host(keys["acme"], a1[2].public_address) == a1[0].name
    assert _login_from_host(keys["globex"], a1[2].public_address) is None

    # release globex, watching the switch and the disks: no disk is touched while its port is elsewhere
    watched = {name: servers[name] for name in ("globex1", "globex2")}
    samples: list[tuple[str, str | None, bool]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            ports = lab_switch.bridge_link(switch)
            for name, (_node, spec, _a) in watched.items():
                samples.append((name, ports.get(spec.switch_port), _wiped(spec.disk_path)))
            time.sleep(0.1)

    assert not any(_wiped(spec.disk_path) for _n, spec, _a in watched.values())
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        release_reservation(globex, actor=Actor(user=customers["globex"]["user"], label="globex"))
        wait_reservation_state(globex, ReservationState.RELEASED, lab_workers, TIMEOUT)
        wait_for(
            lambda: all(
                Node.objects.get(pk=n.pk).state == NodeState.AVAILABLE for n, _s, _a in watched.values()
            ),
            120,
            message="globex's servers available",
            details=lab_workers.logs,
        )
    finally:
        stop.set()
        watcher.join(timeout=10)
    cleaning = f"br{switched.CLEANING_VLAN}"
    for name in watched:
        seen = [(port, wiped) for who, port, wiped in samples if who == name]
        runs = [state for i, state in enumerate(seen) if i == 0 or seen[i - 1] != state]
        assert seen and seen[0] == (f"br{globex_vlan}", False), runs
        assert seen[-1] == (cleaning, True), f"{name}: {runs}\n{lab_workers.logs()}"
        assert all(port == cleaning for port, wiped in seen if wiped), f"{name} wiped off the cleaning VLAN"
        first_wiped = next(i for i, (_p, wiped) in enumerate(seen) if wiped)
        assert any(port == cleaning for port, _w in seen[:first_wiped]), (
            f"{name}: no move seen before the wipe"
        )
    # back on the cleaning VLAN, the same server reaches both again, through its own NIC
    globex1_netns = watched["globex1"][1].netns
    assert _provisioning_services(globex1_netns, settings.NEOCLOUD_BOOT_URL) == {
        "boot": "404",
        "image": "200",
    }
    # globex's network is gone from the switch; acme's still works
    assert globex_vlan not in lab_switch.gateways_on_switch(switch)
    assert set(lab_switch.published_on_switch(switch)) == {a1[2].public_address, a2[2].public_address}
    assert _login_from(a2[1].netns, keys["acme"], a1[2].private_address) == a1[0].name


@pytest.fixture
def switched_lab2(lab_workers, live_server, settings):
    with _switched_lab(2, live_server.url) as specs:
        yield specs


def test_a_warm_server_waits_on_the_provisioning_vlan_and_is_handed_over_on_its_tenants(
    switched_lab2, lab_workers, customers, settings, tmp_path
):
    """The warm pool on a managed site: a warm server sits deployed on the provisioning VLAN with nothing
    published (no customer reaches it); taken by a reservation with a cold-deployed peer, it lands on the
    reservation's VLAN with its public address, the customer logs in through it and the peer answers on the
    private network. Then the customer's reboot (a power cycle through the BMC): the warm server's OS brings
    its private network up again from its own configuration, keeps the host keys and keys its personalize and
    handover left (the provisioning key is still refused)."""
    switch = switched.running_switch(Path(settings.NEOCLOUD_LAB_DIR))
    assert switch is not None
    demo = Image.objects.get(slug="neocloud-demo-linux")
    h100 = ServerType.objects.get(slug="h100-8x")
    h100.warm_pool_size, h100.warm_pool_image = 1, demo
    h100.save()
    lab_workers.worker()
    lab_workers.scheduler()
    wait_for(
        lambda: Node.objects.filter(state=NodeState.WARM).count() == 1,
        TIMEOUT,
        interval=0.5,
        message="a warm server",
        details=lab_workers.logs,
    )
    warm = Node.objects.get(state=NodeState.WARM)
    spec = switched_lab2[warm.name]
    assert lab_switch.bridge_link(switch)[spec.switch_port] == "br100"
    assert lab_switch.published_on_switch(switch) == {}
    assert _provisioning_services(spec.netns, settings.NEOCLOUD_BOOT_URL) == {"boot": "404", "image": "200"}

    key = tmp_path / "acme.key"
    key.write_text(customers["acme"]["private"])
    key.chmod(0o600)
    reservation = _reserve(customers["acme"], 2)
    assert warm.pk in {n.pk for n in Node.objects.filter(reservation=reservation)}  # the warm server first
    wait_reservation_state(reservation, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    attachment = NetworkAttachment.objects.live().select_related("network").get(node=warm)
    peer = NetworkAttachment.objects.live().exclude(node=warm).get(reservation=reservation)
    assert lab_switch.bridge_link(switch)[spec.switch_port] == f"br{attachment.network.vlan}"
    assert lab_switch.published_on_switch(switch) == {
        attachment.public_address: attachment.private_address,
        peer.public_address: peer.private_address,
    }
    assert _login_from_host(key, attachment.public_address) == warm.name
    assert _login_from(spec.netns, key, peer.private_address) == peer.node.name
    # and from the warm server's new network, the boot service and the image server are out of reach
    assert not _ping(spec.netns, "198.18.0.1")
    assert _provisioning_services(spec.netns, settings.NEOCLOUD_BOOT_URL) == {"boot": "none", "image": "none"}

    # the customer's reboot: power cycled through the server's BMC
    warm.refresh_from_db()
    driver = hardware.power_driver(warm)
    try:
        driver.power_off()
        wait_for(lambda: driver.get_power_state().value == "off", 30, interval=0.5, message="the server off")
        assert _login_from_host(key, attachment.public_address) is None
        driver.power_on()
    finally:
        driver.close()
    wait_for(
        lambda: _login_from_host(key, attachment.public_address) == warm.name,
        60,
        interval=0.5,
        message="the warm server back up behind its public address",
        details=lambda: _network_dump(switch, switched_lab2),
    )
    # the host keys its personalize generated (strict check against what the customer was given)
    status, out, _ = run_command(
        attachment.public_address, 22, "root", customers["acme"]["private"], warm.host_key_fingerprints,
        "hostname", timeout=20,
    )  # fmt: skip
    assert (status, out.strip()) == (0, warm.name)
    # its private network came back from the OS's own configuration: the peer answers from inside it
    assert _ping(spec.netns, peer.private_address)
    assert _login_from(spec.netns, key, peer.private_address) == peer.node.name
    assert not _ping(spec.netns, "198.18.0.1")
    # and the provisioning key the warm pool deployed it with is still refused
    stored = (
        Operation.objects.filter(node=warm, params__has_key="provisioning_key").order_by("created_at").first()
    )
    with pytest.raises(SshAuthFailed):
        run_command(
            attachment.public_address, 22, "root", crypto.decrypt(stored.params["provisioning_key"]["private"]),
            warm.host_key_fingerprints, "true", timeout=20,
        )  # fmt: skip
