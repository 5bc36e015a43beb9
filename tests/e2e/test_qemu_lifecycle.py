"""End to end on an emulated computer: the engine drives a QEMU lab node (TCG) through the whole product cycle.

The node is a real emulated computer on a lab site of its own (see lab.management.commands.lab): the
lab BMC's power commands start and stop QEMU; it PXE-boots Debian's iPXE ROM through the boot service into the
deploy ramdisk, whose agent streams the lab OS image from the site's image mirror (10.0.2.101 to the guest)
to the virtio disk; booted from the disk, the OS applies the config drive and starts Debian's sshd, reached
at the node's SSH endpoint (a port forward on 127.0.0.1). Real workers run provision.yml, burn-in (simulated
NVML backend, on the node's own python3), handover and, after release, wipe.yml (the ramdisk in erase mode).
"""

from __future__ import annotations

import time
from pathlib import Path

import paramiko
import pytest

from lab.images import LAB_OS_SLUG
from lab.qemu import qemu_available
from lab.ramdisk import ensure_ramdisk
from provisioner import crypto
from provisioner.handover import SshAuthFailed, load_private_key, run_command
from provisioner.lifecycle import Actor
from provisioner.models import DeployTicket, Image, Node, Operation, ServerType
from provisioner.pxe.configdrive import read_config_drive
from provisioner.services.reservations import book_servers, release_reservation
from provisioner.states import NodeState, OperationKind, ReservationState
from tests.conftest import wait_for
from tests.e2e.conftest import wait_reservation_state

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86 and ipxe-qemu are needed"),
]
TIMEOUT = 600


@pytest.fixture
def qemu_lab(lab_workers, live_server, settings):
    """One emulated computer enrolled into Neocloud; the boot service serves the deploy ramdisk."""
    from lab.management.commands.lab import start_lab, stop_lab

    settings.NEOCLOUD_BOOT_DIR = ensure_ramdisk().directory
    try:
        (spec,) = start_lab(1, protocols="ipmi", boot_url=live_server.url, kind="qemu")
        yield spec
    finally:
        stop_lab()


def _login_with_known_hosts(node: Node, private_key: str, known_hosts: Path, command: str) -> str:
    """Log in as the customer would with OpenSSH: host key looked up in known_hosts, unknown keys refused."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            node.ssh_address,
            node.ssh_port,
            node.ssh_user,
            pkey=load_private_key(private_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=30,
        )
        _, stdout, _ = client.exec_command(command, timeout=30)
        return stdout.read().decode()
    finally:
        client.close()


def test_engine_provisions_hands_over_and_wipes_an_emulated_computer(
    qemu_lab, lab_workers, customers, settings, tmp_path
):
    spec = qemu_lab
    customer = customers["acme"]
    lab_workers.worker()
    lab_workers.scheduler()
    started = time.monotonic()
    reservation = book_servers(
        customer["org"],
        ServerType.objects.get(slug="h100-8x"),
        1,
        image=Image.objects.get(slug=LAB_OS_SLUG),
        ssh_keys=[customer["key"]],
        actor=Actor(user=customer["user"], label=customer["user"].username),
    ).reservation
    wait_reservation_state(reservation, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    provisioned = time.monotonic() - started

    node = Node.objects.get(reservation=reservation)
    assert node.name == spec.name
    # the SSH endpoint is the node's port forward, everywhere the engine recorded it
    assert (node.ssh_address, node.ssh_port) == ("127.0.0.1", spec.ssh_forward_port)
    host = f"[127.0.0.1]:{spec.ssh_forward_port}"
    assert node.known_hosts and all(line.startswith(f"{host} ") for line in node.known_hosts.splitlines())
    # the agent fetched the image from the site's mirror, the address the guest reaches
    ticket = DeployTicket.objects.filter(node=node, instructions__action="deploy").latest("created_at")
    assert ticket.instructions["image"]["url"].startswith("http://10.0.2.101/"), ticket.instructions
    op = Operation.objects.filter(node=node, kind=OperationKind.PROVISION).latest("created_at")
    # an emulated computer takes its time: the operation parked (no worker held) for its deploy agent
    assert op.log_lines.filter(message__startswith="waiting for the deploy agent").exists()
    assert op.log_lines.filter(message__startswith="TASK [Boot from disk from now on").exists()
    assert node.burnin_reports.get().passed
    # the computer really ran the ramdisk's agent, then booted the OS from its disk
    console = (Path(settings.NEOCLOUD_LAB_DIR) / "nodes" / spec.name / "qemu" / "console.log").read_text(
        errors="replace"
    )
    assert "neocloud-ramdisk: agent exited with status 0" in console
    assert f"neocloud-os: configured {node.name}" in console

    # the customer logs in with strict host-key checking: against the recorded fingerprints...
    status, out, _ = run_command(
        node.ssh_address,
        node.ssh_port,
        node.ssh_user,
        customer["private"],
        node.host_key_fingerprints,
        "hostname; cat /proc/cmdline",
        30,
    )
    assert status == 0 and out.splitlines()[0] == node.name, out
    # ... and against the known_hosts lines the customer is given ([host]:port form)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(node.known_hosts + "\n")
    assert _login_with_known_hosts(node, customer["private"], known_hosts, "hostname").strip() == node.name
    # our provisioning key was removed at handover
    provisioning_private = crypto.decrypt(op.params["provisioning_key"]["private"])
    with pytest.raises(SshAuthFailed, match="refused key"):
        run_command(
            node.ssh_address,
            node.ssh_port,
            node.ssh_user,
            provisioning_private,
            node.host_key_fingerprints,
            "true",
            30,
        )

    released_at = time.monotonic()
    release_reservation(reservation, actor=Actor(user=customer["user"], label="acme"))
    wait_reservation_state(reservation, ReservationState.RELEASED, lab_workers, TIMEOUT)
    wait_for(
        lambda: Node.objects.get(pk=node.pk).state == NodeState.AVAILABLE,
        TIMEOUT,
        interval=0.5,
        message="node available",
        details=lab_workers.logs,
    )
    wiped = time.monotonic() - released_at
    with open(spec.disk_path, "rb") as disk:
        assert not any(disk.read(4 * 1024 * 1024)), "disk not overwritten"
    assert read_config_drive(spec.disk_path) is None
    node.refresh_from_db()
    assert node.ssh_address == "" and node.known_hosts == ""
    print(
        f"emulated computer: reserved to active in {provisioned:.1f} s, release to available in {wiped:.1f} s"
    )
